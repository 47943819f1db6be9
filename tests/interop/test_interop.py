#!/usr/bin/env python3
"""Interop test: a Python agency talks to biomatch over Kafka.

The client uses only public, standard tooling: confluent-kafka and protobuf
from PyPI, with the message classes generated from proto/biomatch.proto by
the standard protoc (grpcio-tools' bundled copy, so the generated code
matches the installed protobuf runtime).

Against the real broker and Redis of the integration fixture
(BIOMATCH_KAFKA_BROKERS, BIOMATCH_REDIS_URL) it:
  1. defines a small face gallery and its topics with `biomatch gallery
     create` (unique gallery name and topic prefix per run), generates a
     seeded gallery with known mates (`biomatch gen`) and enrolls it
     (`biomatch enroll`);
  2. starts one biomatch-coordinator and one biomatch-worker;
  3. submits jobs from Python, raw protobuf AND Schema Registry framing
     (0x00, schema id, message indexes), and reads the results from Python;
  4. checks status OK, full coverage, rank-1 = the known mate, candidates
     in order, and that the job's traceparent came back on the result;
  5. stops the processes.
Every wait is bounded. Exit 0 = pass, 1 = fail (a missing Python dependency
is a failure too: scripts/setup installs them).
"""
import argparse
import importlib
import os
import secrets
import signal
import struct
import subprocess
import sys
import tempfile
import time



def log(msg):
    print(f"[interop {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Fail(Exception):
    pass


def need(cond, msg):
    if not cond:
        raise Fail(msg)


def run(cmd, env, timeout=120):
    log("$ " + " ".join(cmd))
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise Fail(f"{cmd[0]} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p.stdout


def generate_proto(proto, out):
    from grpc_tools import protoc  # noqa: F401  (import check only)
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{os.path.dirname(proto)}",
           f"--python_out={out}", proto]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise Fail(f"protoc failed: {p.stderr}")
    sys.path.insert(0, out)
    return importlib.import_module("biomatch_pb2")


def sr_frame(pb, payload, schema_id, message_name):
    """Confluent Schema Registry framing: magic 0, big-endian schema id,
    the message-index path (count then indexes, zigzag varints), payload."""
    index = [m.name for m in pb.DESCRIPTOR.message_types_by_name.values()].index(message_name)

    def varint(n):
        n = (n << 1) ^ (n >> 63)  # zigzag
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            if n:
                out.append(b | 0x80)
            else:
                out.append(b)
                return bytes(out)

    path = b"\x00" if index == 0 else varint(1) + varint(index)
    return b"\x00" + struct.pack(">I", schema_id) + path + payload


def traceparent():
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="directory with biomatch, -coordinator, -worker")
    ap.add_argument("--proto", required=True, help="proto/biomatch.proto")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    try:
        import numpy as np
        from confluent_kafka import Consumer, Producer, TopicPartition
        import grpc_tools  # noqa: F401
    except ImportError as e:
        print(f"FAIL: python dependency missing ({e}); run scripts/setup", flush=True)
        return 1

    brokers = os.environ.get("BIOMATCH_KAFKA_BROKERS")
    redis = os.environ.get("BIOMATCH_REDIS_URL")
    if not brokers or not redis:
        print("BIOMATCH_KAFKA_BROKERS and BIOMATCH_REDIS_URL must be set", flush=True)
        return 1

    tag = secrets.token_hex(4)
    prefix = f"interop{tag}."
    gallery = f"interop_{tag}"
    work = args.workdir or tempfile.mkdtemp(prefix="biomatch-interop-")
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ)
    env["BIOMATCH_TOPIC_PREFIX"] = prefix
    env.setdefault("BIOMATCH_LOG_LEVEL", "info")
    cli = os.path.join(args.bin, "biomatch")
    count, dim = 300, 64
    procs = []
    try:
        pb = generate_proto(args.proto, work)

        run([cli, "gallery", "create", gallery, "--modality", "face", "--dim", str(dim),
             "--format", "f32", "--shards", "2", "--partitions", "2"], env)
        gen = os.path.join(work, "gen")
        run([cli, "gen", "--modality", "face", "--count", str(count), "--dim", str(dim),
             "--probes", "4", "--mated", "1", "--seed", "7", "--id-prefix", "ip", "--out", gen],
            env)
        run([cli, "enroll", "--gallery", gallery, "--ids", f"{gen}/gallery.ids",
             "--npy", f"{gen}/gallery.npy", "--quiet"], env)
        probes = np.load(f"{gen}/probes.npy")
        truth = {}
        with open(f"{gen}/probes.truth") as f:
            for line in f:
                i, mate = line.split()
                truth[int(i)] = mate
        need(all(m != "-" for m in truth.values()), "gen --mated 1 produced a non-mated probe")

        config = os.path.join(work, "biomatch.yaml")
        with open(config, "w") as f:
            f.write(f'topic_prefix: "{prefix}"\nbrokers: "{brokers}"\nredis:\n  url: "{redis}"\n'
                    f"http:\n  port: 0\n  bind: 127.0.0.1\nworker:\n  galleries: [{gallery}]\n")
        for prog, node in (("biomatch-coordinator", f"interop-coord-{tag}"),
                           ("biomatch-worker", f"interop-worker-{tag}")):
            penv = dict(env)
            penv["BIOMATCH_NODE_ID"] = node
            logf = open(os.path.join(work, f"{prog}.log"), "w")
            procs.append((prog, subprocess.Popen([os.path.join(args.bin, prog), "--config", config],
                                                 env=penv, stdout=logf, stderr=subprocess.STDOUT),
                          logf))

        # The coordinator seals the enrolled subjects into segments.
        deadline = time.monotonic() + 90
        while True:
            out = subprocess.run([cli, "gallery", "stats", gallery, "--json"], env=env,
                                 capture_output=True, text=True, timeout=30).stdout
            import json
            try:
                subjects = json.loads(out.strip().splitlines()[-1]).get("subjects", 0)
            except (ValueError, IndexError):
                subjects = 0
            if subjects == count:
                break
            for name, p, _ in procs:
                need(p.poll() is None, f"{name} exited early with {p.returncode}")
            need(time.monotonic() < deadline, f"only {subjects}/{count} subjects sealed in 90 s")
            time.sleep(0.3)
        log(f"{count} subjects sealed")

        results_topic = f"{prefix}results"
        jobs_topic = f"{prefix}jobs"
        consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"interop-{tag}",
                             "enable.auto.commit": False, "auto.offset.reset": "earliest",
                             "fetch.wait.max.ms": 10})
        md = consumer.list_topics(results_topic, timeout=15)
        parts = md.topics[results_topic].partitions
        need(parts, f"{results_topic} has no partitions")
        # Positioned at the high watermarks before anything is sent, so no
        # result can be missed.
        tps = []
        for p in parts:
            lo, hi = consumer.get_watermark_offsets(TopicPartition(results_topic, p), timeout=15)
            tps.append(TopicPartition(results_topic, p, hi))
        consumer.assign(tps)
        producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True})

        def new_job(job_id, probe_index):
            job = pb.MatchJob()
            job.job_id = job_id
            job.agency = "interop-py"
            job.gallery = gallery
            job.mode = pb.MATCH_MODE_IDENTIFY
            t = job.probes.add()
            t.modality = pb.MODALITY_FACE
            t.dense.dim = dim
            t.dense.element_type = pb.ELEMENT_TYPE_F32
            t.dense.data = probes[probe_index].astype("<f4").tobytes()
            job.top_k = 3
            return job

        def submit(probe_index, framing):
            job = new_job(f"interop-{tag}-{framing}-{secrets.token_hex(4)}", probe_index)
            job.submitted_unix_ms = int(time.time() * 1000)
            job.deadline_unix_ms = job.submitted_unix_ms + 30000
            job.attributes["case"] = framing
            payload = job.SerializeToString()
            tp = traceparent()
            if framing == "sr":
                value = sr_frame(pb, payload, 42, "MatchJob")
                ct = "application/vnd.confluent.protobuf"
            else:
                value = payload
                ct = "application/x-protobuf; proto=biomatch.v1.MatchJob"
            producer.produce(jobs_topic, key=job.job_id.encode(), value=value,
                             headers=[("content-type", ct.encode()), ("traceparent", tp.encode())])
            need(producer.flush(30) == 0, "job not delivered within 30 s")
            return job.job_id, tp

        def await_results(want, timeout):
            got = {}
            end = time.monotonic() + timeout
            while len(got) < len(want) and time.monotonic() < end:
                m = consumer.poll(0.2)
                if m is None or m.error() or m.value() is None:
                    continue
                r = pb.MatchResult()
                r.ParseFromString(m.value())
                if r.job_id in want and r.job_id not in got:
                    got[r.job_id] = (r, dict(m.headers() or []))
                    need(m.key() == r.job_id.encode(),
                         f"result of {r.job_id!r} keyed {m.key()!r}: results are keyed by job_id")
            return got

        # Warm-up: the worker follows new manifest versions within a moment
        # of their publication; wait until one job has seen every subject.
        deadline = time.monotonic() + 90
        while True:
            jid, _ = submit(0, "raw")
            got = await_results({jid}, 15)
            if jid in got:
                r = got[jid][0]
                log(f"warm-up: {pb.ResultStatus.Name(r.status)}, {r.comparisons} comparisons")
                if r.status == pb.RESULT_STATUS_OK and r.comparisons >= count:
                    break
            for name, p, _ in procs:
                need(p.poll() is None, f"{name} exited early with {p.returncode}")
            need(time.monotonic() < deadline, "no complete result within 90 s")
            time.sleep(0.5)

        sent = {}
        for i, framing in ((1, "raw"), (2, "sr"), (3, "sr")):
            jid, tp = submit(i, framing)
            sent[jid] = (i, framing, tp)
        got = await_results(set(sent), 60)
        need(len(got) == len(sent), f"{len(got)} of {len(sent)} results within 60 s")
        for jid, (i, framing, tp) in sent.items():
            r, headers = got[jid]
            status = pb.ResultStatus.Name(r.status)
            need(r.status == pb.RESULT_STATUS_OK, f"{framing} job {jid}: status {status} {r.error}")
            need(r.shards_answered == r.shards_total == 2, f"{jid}: coverage {r.coverage}")
            need(len(r.candidates) == 3, f"{jid}: {len(r.candidates)} candidates, want 3")
            need(r.candidates[0].subject_id == truth[i],
                 f"{jid}: rank-1 {r.candidates[0].subject_id}, mate is {truth[i]}")
            need([c.rank for c in r.candidates] == [1, 2, 3], f"{jid}: ranks out of order")
            scores = [c.score for c in r.candidates]
            need(scores == sorted(scores, reverse=True), f"{jid}: scores not descending")
            need(r.agency == "interop-py" and r.gallery == gallery, f"{jid}: agency/gallery")
            need(r.attributes.get("case") == framing, f"{jid}: attributes not copied")
            tph = headers.get("traceparent")
            need(tph is not None and tph.decode() == tp,
                 f"{jid}: traceparent {tph!r} on the result, sent {tp}")
            log(f"{framing} job ok: rank-1 {r.candidates[0].subject_id} "
                f"score {r.candidates[0].score:.4f}")
        # What a client developer hit: an empty record value is answered
        # like any rejection, under its record key in the key and in
        # job_id, so waiting by job_id finds it.
        empty_key = f"interop-{tag}-empty"
        producer.produce(jobs_topic, key=empty_key.encode(), value=b"")
        need(producer.flush(30) == 0, "empty record not delivered within 30 s")
        got = await_results({empty_key}, 60)
        need(empty_key in got, "no result with job_id = the record key for an empty value")
        r = got[empty_key][0]
        need(r.status == pb.RESULT_STATUS_REJECTED,
             f"empty value: {pb.ResultStatus.Name(r.status)}, want REJECTED")
        log(f"empty value: REJECTED {pb.ErrorCode.Name(r.error_code)} under its key")
        # A reply_topic must exist already (docs/wire.md, MatchJob): a job
        # naming one that does not is rejected on the results topic.
        job = new_job(f"interop-{tag}-noreply", 0)
        job.reply_topic = f"{prefix}no-such-reply-{tag}"
        producer.produce(jobs_topic, key=job.job_id.encode(), value=job.SerializeToString())
        need(producer.flush(30) == 0, "job not delivered within 30 s")
        got = await_results({job.job_id}, 60)
        need(job.job_id in got, "no result on the results topic for a missing reply_topic")
        r = got[job.job_id][0]
        need(r.status == pb.RESULT_STATUS_REJECTED and r.error_code == pb.ERROR_CODE_INVALID_VALUE,
             f"missing reply_topic: {pb.ResultStatus.Name(r.status)} "
             f"{pb.ErrorCode.Name(r.error_code)}, want REJECTED INVALID_VALUE")
        log("missing reply_topic: REJECTED INVALID_VALUE on results")
        consumer.close()
        log("PASS")
        return 0
    except (Fail, subprocess.TimeoutExpired) as e:
        log(f"FAIL: {e}")
        for name, _, logf in procs:
            logf.flush()
            try:
                with open(logf.name) as f:
                    tail = f.readlines()[-25:]
                print(f"--- {name} log (last lines) ---\n" + "".join(tail), flush=True)
            except OSError:
                pass
        return 1
    finally:
        for name, p, _ in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p, logf in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log(f"{name} ignored SIGTERM for 30 s; killing it")
                p.kill()
                p.wait(timeout=10)
            logf.close()


if __name__ == "__main__":
    sys.exit(main())
