#!/usr/bin/env python3
"""Interop test: a Python agency talks to biomatch over Kafka.

The client uses only public, standard tooling: confluent-kafka and protobuf
from PyPI, with the message classes generated from proto/biomatch.proto by
the standard protoc (grpcio-tools' bundled copy, so the generated code
matches the installed protobuf runtime) when the agency client library
(clients/python) is pip-installed into a scratch directory.

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
  5. checks what a client developer hit: an empty record value is answered
     under its key, a missing reply_topic is rejected on results;
  6. drives the client library itself: identify (raw and framed), verify,
     a typed error, enroll then delete, and a record signature equal to the
     C signer's;
  7. stops the processes.
Every wait is bounded. Exit 0 = pass, 1 = fail (a missing Python dependency
is a failure too: scripts/setup installs them).
"""
import argparse
import importlib
import os
import secrets
import signal
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


def install_client(client_dir, work):
    """Install the agency client library (clients/python) the way an
    integrator does, into a scratch directory, and import it: its protobuf
    classes are generated from proto/biomatch.proto by the install."""
    target = os.path.join(work, "pyclient")
    run([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps",
         "--disable-pip-version-check", "--upgrade", "--target", target, client_dir], os.environ,
        timeout=300)
    sys.path.insert(0, target)
    return importlib.import_module("biomatch_client")


def traceparent():
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def client_checks(work, brokers, prefix, gallery, probes, truth, dim, cli, env,
                  probes_npy):
    """The agency client library (clients/python), installed the way an
    integrator installs it, against the same cluster: identify (raw and
    Schema Registry framing), verify, enroll then delete, a typed error."""
    import numpy as np
    from biomatch_client import Client, dense, errors

    with Client(brokers, agency="interop-py", prefix=prefix) as c, \
            Client(brokers, agency="interop-py", prefix=prefix, schema_id=7) as sr:
        for cl, name in ((c, "raw"), (sr, "sr")):
            job = cl.identify(gallery, dense(probes[1]), top_k=3)
            r = cl.wait_result(job, timeout=60)
            need([x.subject_id for x in r.candidates][:1] == [truth[1]],
                 f"client {name} identify: rank-1 {r.candidates[0].subject_id if r.candidates else None}")
        r = c.wait_result(c.verify(gallery, dense(probes[2]), truth[2], threshold=0.5), 60)
        need(r.verified, f"client verify of the mate: verified={r.verified}")
        try:
            c.wait_result(c.identify(gallery, dense(probes[0]), top_k=0), 60)
            need(False, "top_k 0 was accepted")
        except errors.InvalidTopK as e:
            need(e.code_name == "ERROR_CODE_INVALID_TOP_K" and e.status == "RESULT_STATUS_REJECTED",
                 f"typed error: {e.code_name} {e.status}")
        # Enroll a new subject, find it, delete it, stop finding it.
        rng = np.random.default_rng(11)
        vec = rng.standard_normal(dim).astype("<f4")
        subject = f"pyclient-{os.getpid()}"
        c.enroll(gallery, subject, dense(vec))

        def rank1():
            r = c.wait_result(c.identify(gallery, dense(vec), top_k=1), 60)
            return r.candidates[0].subject_id if r.candidates else None

        deadline = time.monotonic() + 90
        while rank1() != subject:
            need(time.monotonic() < deadline, "an enrolled subject was not found within 90 s")
            time.sleep(0.5)
        c.delete(gallery, subject)
        deadline = time.monotonic() + 90
        while rank1() == subject:
            need(time.monotonic() < deadline, "a deleted subject was still found after 90 s")
            time.sleep(0.5)
    log("client library: identify (raw, sr), verify, typed error, enroll and delete ok")
    same_signature_as_c(cli, env, work, brokers, prefix, gallery, probes_npy)


def same_signature_as_c(cli, env, work, brokers, prefix, gallery, probes_npy):
    """The client's signature over a record equals the C signer's (the
    command's --sign-key) bit for bit: Ed25519 is deterministic, so the
    same key over the same record and timestamp must give the same header."""
    from confluent_kafka import Consumer, TopicPartition
    from biomatch_client import wire
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    keyprefix = os.path.join(work, "sigkey")
    for ext in (".pem", ".pub"):
        if os.path.exists(keyprefix + ext):
            os.unlink(keyprefix + ext)
    run([cli, "keygen", "--out", keyprefix, "--key-id", "sig-1"], env)
    topic = f"{prefix}jobs"
    cons = Consumer({"bootstrap.servers": brokers, "group.id": "interop-sig",
                     "enable.auto.commit": False, "fetch.wait.max.ms": 10})
    parts = cons.list_topics(topic, timeout=15).topics[topic].partitions
    cons.assign([TopicPartition(topic, p, cons.get_watermark_offsets(
        TopicPartition(topic, p), timeout=15)[1]) for p in parts])
    job_id = f"interop-sig-{secrets.token_hex(4)}"
    run([cli, "submit", "--gallery", gallery, "--npy", probes_npy, "--row", "0",
         "--agency", "interop-sig", "--job-id", job_id, "--sign-key", keyprefix + ".pem",
         "--key-id", "sig-1"], env)
    end = time.monotonic() + 60
    m = None
    while time.monotonic() < end:
        m = cons.poll(0.2)
        if m is not None and not m.error() and m.key() == job_id.encode():
            break
        m = None
    cons.close()
    need(m is not None, "the signed job did not appear on the jobs topic")
    got = dict(m.headers()).get(wire.SIGNATURE_HEADER, b"").decode()
    kid, ts, _ = got.split(":", 2)
    with open(keyprefix + ".pem", "rb") as f:
        key = load_pem_private_key(f.read(), password=None)
    want = wire.signature_header(key, kid, "biomatch.v1.MatchJob", topic, m.key(),
                                 "interop-sig", job_id, int(ts), m.value())
    need(got == want, f"signature differs from the C signer's:\n C  {got}\n py {want}")
    log("client library: its record signature equals the C signer's")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="directory with biomatch, -coordinator, -worker")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--client", required=True, help="clients/python, the agency client library")
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
        pb = install_client(args.client, work).pb
        from biomatch_client import wire

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
                value = wire.sr_frame(payload, 42, "MatchJob")
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
                    # The job key (docs/wire.md section 1): job ids are
                    # namespaced by agency, "<len(agency)>:<agency><job_id>".
                    agency = r.agency.encode()
                    want_key = b"%d:" % len(agency) + agency + r.job_id.encode()
                    need(m.key() == want_key,
                         f"result of {r.job_id!r} keyed {m.key()!r}: results are keyed by "
                         f"the job key {want_key!r}")
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
        client_checks(work, brokers, prefix, gallery, probes, truth, dim, cli, env,
                      f"{gen}/probes.npy")
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
