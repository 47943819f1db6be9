"""biomatch-client: submit identify, verify, enroll and delete requests to a
biomatch cluster over Kafka and wait for the answers (README.md)."""
from . import biomatch_pb2 as pb
from .client import Client, dense, iris
from .errors import BiomatchError, JobTimedOut, ResultTimeout, error_for

__all__ = ["Client", "dense", "iris", "pb", "BiomatchError", "JobTimedOut", "ResultTimeout",
           "error_for"]
