"""Record framing and signing, as docs/wire.md specifies them: Confluent
Schema Registry framing (section 2) and the Ed25519 record signature
carried in the biomatch-signature header (section 13)."""
import base64
import struct

from . import biomatch_pb2 as pb

SIGNATURE_HEADER = "biomatch-signature"
_LABEL = b"biomatch-record-signature-v2\0"


def _zigzag_varint(n):
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def sr_frame(payload, schema_id, message_name):
    """Wrap 'payload' in Schema Registry framing: magic 0, big-endian
    schema id, the message-index path of 'message_name' in the proto file,
    then the protobuf bytes."""
    names = list(pb.DESCRIPTOR.message_types_by_name)
    index = names.index(message_name)
    path = b"\x00" if index == 0 else _zigzag_varint(1) + _zigzag_varint(index)
    return b"\x00" + struct.pack(">I", schema_id) + path + payload


def _part(b):
    return struct.pack(">I", len(b)) + b


def signature_header(private_key, key_id, message_type, topic, key, agency, record_id,
                     timestamp_ms, value):
    """The value of the biomatch-signature header for one record, signed
    with 'private_key' (a cryptography Ed25519PrivateKey)."""
    msg = (_LABEL + _part(message_type.encode()) + _part(topic.encode()) + _part(key) +
           _part(agency.encode()) + _part(record_id.encode()) +
           struct.pack(">q", timestamp_ms) + struct.pack(">Q", len(value)) + value)
    sig = base64.b64encode(private_key.sign(msg)).decode()
    return f"{key_id}:{timestamp_ms}:{sig}"
