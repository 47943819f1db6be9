"""The agency client: jobs and enrolments out, results back.

A Client produces MatchJob records to <prefix>jobs and EnrollRequest
records to <prefix>enroll (idempotent producer, optional Schema Registry
framing, optional Ed25519 signature), and reads MatchResult records from
the results topic (or its own reply topic). The reader is positioned at the
topic's end when the client is created, so no result of a job submitted
afterwards can be missed; results are matched by (agency, job_id) and at
most once per job (results are at-least-once on the wire).
"""
import secrets
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from . import biomatch_pb2 as pb
from .errors import BiomatchError, JobTimedOut, ResultTimeout, error_for
from .wire import SIGNATURE_HEADER, signature_header, sr_frame

_MODALITIES = {"face": pb.MODALITY_FACE, "fingerprint": pb.MODALITY_FINGERPRINT,
               "palm": pb.MODALITY_PALM}


def dense(vector, modality="face"):
    """A dense probe or enrolment template from a sequence of floats (a list
    or a numpy array); sent as little-endian float32."""
    values = [float(x) for x in vector]
    t = pb.Template()
    t.modality = _MODALITIES[modality]
    t.dense.dim = len(values)
    t.dense.element_type = pb.ELEMENT_TYPE_F32
    import struct
    t.dense.data = struct.pack(f"<{len(values)}f", *values)
    return t


def iris(code, mask, filters=2, rows=16, columns=256, bits_per_cell=2):
    """An iris template from code and mask bytes (docs/wire.md, IrisCode)."""
    t = pb.Template()
    t.modality = pb.MODALITY_IRIS
    t.iris.code = bytes(code)
    t.iris.mask = bytes(mask)
    g = t.iris.geometry
    g.filters, g.rows, g.columns, g.bits_per_cell = filters, rows, columns, bits_per_cell
    return t


class Client:
    """brokers: "host:port[,...]"; agency: the name the policy knows you by.
    signing_key: an Ed25519 private key as PEM bytes (or a path), with its
    key_id in the policy; schema_id: send with Schema Registry framing under
    this id (None: raw protobuf). reply_topic: read results there instead of
    <prefix>results (it must exist already). kafka: extra librdkafka
    properties (security.protocol, ...) for both producer and consumer."""

    def __init__(self, brokers, agency, prefix="biomatch.", signing_key=None, key_id=None,
                 schema_id=None, reply_topic=None, kafka=None):
        self.agency = agency
        self.prefix = prefix
        self.schema_id = schema_id
        self.reply_topic = reply_topic or ""
        self._key = _load_key(signing_key) if signing_key is not None else None
        if (self._key is None) != (key_id is None):
            raise ValueError("signing_key and key_id go together")
        self.key_id = key_id
        extra = dict(kafka or {})
        self._producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True,
                                   "linger.ms": 5, **extra})
        # A quiet results topic would otherwise cost up to the default
        # 500 ms fetch wait per result (docs/wire.md section 1).
        self._consumer = Consumer({"bootstrap.servers": brokers,
                                   "group.id": f"biomatch-client-{uuid.uuid4()}",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 10,
                                   **extra})
        topic = self.reply_topic or f"{prefix}results"
        md = self._consumer.list_topics(topic, timeout=15)
        if topic not in md.topics or md.topics[topic].error is not None:
            raise BiomatchError(f"results topic {topic} does not exist")
        tps = []
        for p in md.topics[topic].partitions:
            _, hi = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
            tps.append(TopicPartition(topic, p, hi))
        self._consumer.assign(tps)
        self._results = {}

    # ------------------------------------------------------------ jobs

    def identify(self, gallery, probes, top_k=10, threshold=None, job_id=None,
                 deadline_ms=None, attributes=None):
        """Submit a 1:N search of 'probes' (Templates, or one Template).
        Returns the job id; wait_result(job_id) gives the candidates."""
        return self._job(gallery, pb.MATCH_MODE_IDENTIFY, probes, top_k, threshold, "",
                         job_id, deadline_ms, attributes)

    def verify(self, gallery, probe, subject_id, threshold=None, job_id=None,
               deadline_ms=None, attributes=None):
        """Submit a 1:1 comparison of 'probe' with 'subject_id'. With a
        threshold, the result's 'verified' says whether it passed."""
        return self._job(gallery, pb.MATCH_MODE_VERIFY, probe, 1, threshold, subject_id,
                         job_id, deadline_ms, attributes)

    def _job(self, gallery, mode, probes, top_k, threshold, claimed, job_id, deadline_ms,
             attributes):
        if isinstance(probes, pb.Template):
            probes = [probes]
        job = pb.MatchJob()
        job.job_id = job_id or str(uuid.uuid4())
        job.agency = self.agency
        job.gallery = gallery
        job.mode = mode
        job.top_k = top_k
        if threshold is not None:
            job.threshold = threshold
            job.has_threshold = True
        job.claimed_subject = claimed
        job.reply_topic = self.reply_topic
        job.submitted_unix_ms = int(time.time() * 1000)
        if deadline_ms:
            job.deadline_unix_ms = job.submitted_unix_ms + deadline_ms
        for k, v in (attributes or {}).items():
            job.attributes[k] = v
        for t in probes:
            job.probes.add().CopyFrom(t)
        self._send(f"{self.prefix}jobs", "MatchJob", job.job_id, job, job.job_id)
        return job.job_id

    # ------------------------------------------------------------ gallery

    def enroll(self, gallery, subject_id, template, request_id=None, reply_topic=""):
        """Insert or replace 'subject_id' in 'gallery'. Returns the request
        id. Acceptances are not answered; a rejection goes to 'reply_topic'
        (or the dlq) as an EnrollResult (docs/wire.md section 7)."""
        return self._enroll(gallery, subject_id, pb.EnrollRequest.OP_UPSERT, template,
                            request_id, reply_topic)

    def delete(self, gallery, subject_id, request_id=None, reply_topic=""):
        """Remove 'subject_id' from 'gallery'. Returns the request id."""
        return self._enroll(gallery, subject_id, pb.EnrollRequest.OP_DELETE, None, request_id,
                            reply_topic)

    def _enroll(self, gallery, subject_id, op, template, request_id, reply_topic):
        req = pb.EnrollRequest()
        req.request_id = request_id or str(uuid.uuid4())
        req.agency = self.agency
        req.gallery = gallery
        req.op = op
        req.subject_id = subject_id
        if template is not None:
            req.template.CopyFrom(template)
        req.reply_topic = reply_topic
        req.submitted_unix_ms = int(time.time() * 1000)
        self._send(f"{self.prefix}enroll", "EnrollRequest", subject_id, req, req.request_id)
        return req.request_id

    # ------------------------------------------------------------ sending

    def _send(self, topic, message_name, key, msg, record_id):
        payload = msg.SerializeToString()
        if self.schema_id is not None:
            value = sr_frame(payload, self.schema_id, message_name)
            ct = "application/vnd.confluent.protobuf"
        else:
            value = payload
            ct = f"application/x-protobuf; proto=biomatch.v1.{message_name}"
        headers = [("content-type", ct.encode()),
                   ("traceparent", f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
                    .encode())]
        kb = key.encode()
        if self._key is not None:
            h = signature_header(self._key, self.key_id, f"biomatch.v1.{message_name}", topic,
                                 kb, self.agency, record_id, int(time.time() * 1000), value)
            headers.append((SIGNATURE_HEADER, h.encode()))
        failed = []
        self._producer.produce(topic, key=kb, value=value, headers=headers,
                               on_delivery=lambda err, _m: err and failed.append(err))
        if self._producer.flush(30) != 0 or failed:
            raise BiomatchError(f"{message_name} {record_id} not delivered to {topic}: "
                                f"{failed[0] if failed else 'timed out'}")

    # ------------------------------------------------------------ results

    def wait_result(self, job_id, timeout=30.0):
        """The MatchResult of 'job_id' (submitted by this client's agency).
        Raises ResultTimeout when none arrives within 'timeout' seconds, the
        ErrorCode's class (errors.py) for REJECTED and ERROR results, and
        JobTimedOut for TIMEOUT. OK and PARTIAL results are returned."""
        end = time.monotonic() + timeout
        while (self.agency, job_id) not in self._results:
            left = end - time.monotonic()
            if left <= 0:
                raise ResultTimeout(f"no result for job {job_id} within {timeout} s")
            m = self._consumer.poll(min(left, 0.2))
            if m is None or m.error() or m.value() is None:
                continue
            r = pb.MatchResult()
            try:
                r.ParseFromString(m.value())
            except Exception:  # not ours to judge: skip what does not decode
                continue
            self._results.setdefault((r.agency, r.job_id), r)
        r = self._results.pop((self.agency, job_id))
        status = pb.ResultStatus.Name(r.status)
        if r.status in (pb.RESULT_STATUS_OK, pb.RESULT_STATUS_PARTIAL):
            return r
        if r.status == pb.RESULT_STATUS_TIMEOUT:
            raise JobTimedOut(f"job {job_id}: no shard answered before the deadline",
                              status, r)
        raise error_for(r.error_code)(f"job {job_id}: {status} "
                                      f"{pb.ErrorCode.Name(r.error_code)}: {r.error}", status, r)

    def close(self):
        self._producer.flush(10)
        self._consumer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _load_key(key):
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    if isinstance(key, str):
        with open(key, "rb") as f:
            key = f.read()
    return load_pem_private_key(key, password=None)
