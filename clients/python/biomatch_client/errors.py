"""Typed errors: one exception class per biomatch.v1.ErrorCode, made from
the generated enum so a code added to the proto gets its class with no
change here. ERROR_CODE_INVALID_TOP_K is InvalidTopK, and so on; each is a
BiomatchError carrying the code, the status and the whole MatchResult (or
EnrollResult) that reported it."""
from . import biomatch_pb2 as pb


class BiomatchError(Exception):
    """A job or enrolment that did not succeed. code: the ErrorCode number
    (0 when the status alone says it, e.g. TIMEOUT); code_name: its name;
    status: the ResultStatus name; result: the message received, if any."""
    code = pb.ERROR_CODE_NONE

    def __init__(self, message, status="", result=None):
        super().__init__(message)
        self.status = status
        self.result = result

    @property
    def code_name(self):
        return pb.ErrorCode.Name(self.code)


class ResultTimeout(BiomatchError):
    """No result arrived within the client's wait."""


class JobTimedOut(BiomatchError):
    """The cluster answered TIMEOUT: no shard answered before the deadline."""


def _class_name(code_name):
    words = code_name[len("ERROR_CODE_"):].split("_")
    return "".join(w.capitalize() for w in words)


BY_CODE = {}
for _name, _number in pb.ErrorCode.items():
    if _number == pb.ERROR_CODE_NONE:
        continue
    _cls = type(_class_name(_name), (BiomatchError,), {"code": _number, "__doc__": _name})
    BY_CODE[_number] = _cls
    globals()[_cls.__name__] = _cls


def error_for(code):
    """The exception class of ErrorCode 'code' (BiomatchError if unknown)."""
    return BY_CODE.get(code, BiomatchError)
