/* Integration test of the keyed audit chain (coordinator/audit.c,
 * lib/audit, `biomatch audit verify`) against the real broker and Redis.
 *
 * The intake role runs in-process with an audit key and a 1 s checkpoint
 * interval; junk job records each leave an audit record. The role is
 * stopped (final checkpoint) and started again with the same node id: the
 * restarted writer must recover its head from the audit topic and continue
 * the same chain (seqs contiguous, the first new record's prev_hash is the
 * final checkpoint's hash). Every hash is recomputed here with OpenSSL from
 * the record's encoding. Then copies of the topic are written with one
 * record modified, one deleted, one inserted (a replay) and the tail
 * truncated, and `biomatch audit verify` must exit 1 naming each; the
 * untouched topic verifies (exit 0). Labels: integration, security. */
#include "role.h"

#include "intake.h"

#include <openssl/hmac.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "audit/read.h"
#include "coord_helpers.h"
#include "obs/log.h"
#include "wire/decode.h"

#define KEY_HEX "00112233445566778899aabbccddeeff0123456789abcdef0011223344556677"
#define KEY_ID "audit-test-1"

static char key_path[128];
static char audit_topic[256];
static struct th_rec recs[TH_MAX_RECS];
static size_t nrecs;

static void write_key(void)
{
    snprintf(key_path, sizeof key_path, "/tmp/bm-test-audit-key-%ld", (long)getpid());
    FILE *f = fopen(key_path, "w");
    assert_non_null(f);
    fputs(KEY_HEX "\n", f);
    fclose(f);
    assert_int_equal(chmod(key_path, 0600), 0);
}

static void key_bytes(uint8_t key[32])
{
    for (int i = 0; i < 32; i++) {
        unsigned v = 0;
        sscanf(KEY_HEX + 2 * i, "%2x", &v);
        key[i] = (uint8_t)v;
    }
}

static Biomatch__V1__AuditRecord *decode(const struct th_rec *r)
{
    Biomatch__V1__AuditRecord *a = biomatch__v1__audit_record__unpack(NULL, r->len, r->value);
    assert_non_null(a);
    return a;
}

struct tally {
    size_t records, jobs;
};

static int on_record(int32_t partition, int64_t offset, const void *value, size_t len,
                     void *opaque)
{
    (void)partition;
    (void)offset;
    struct tally *t = opaque;
    Biomatch__V1__AuditRecord *a = biomatch__v1__audit_record__unpack(NULL, len, value);
    assert_non_null(a);
    t->records++;
    t->jobs += a->kind == BIOMATCH__V1__AUDIT_RECORD__KIND__KIND_JOB;
    biomatch__v1__audit_record__free_unpacked(a, NULL);
    return 0;
}

/* Records in the audit topic now (read to its end with lib/audit/read.h). */
static struct tally count(struct th_env *e)
{
    struct tally t = {0, 0};
    char err[256];
    int rc = bm_audit_read(&e->bus, audit_topic, 0, 0, TH_WAIT_MS, on_record, &t, NULL, err,
                           sizeof err);
    if (rc != BM_OK)
        fail_msg("read %s: %s", audit_topic, err);
    return t;
}

static void wait_jobs(struct th_env *e, size_t want)
{
    int64_t end = bm_test_now_ms() + TH_WAIT_MS;
    size_t n = 0;
    while ((n = count(e).jobs) < want && bm_test_now_ms() < end) {
        struct timespec ts = {0, 200000000L};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(n, want);
}

/* n junk job records; the first carries a signature header naming key
 * "bp-test" (the audit records the key id the request named). */
static void send_junk(struct th_env *e, const char *jobs, int n)
{
    char err[256];
    struct bm_producer *p = bm_producer_new(&e->bus, err, sizeof err);
    assert_non_null(p);
    struct bm_bus_headers h;
    bm_bus_headers_init(&h);
    bm_bus_headers_add_str(&h, "biomatch-signature", "bp-test:1700000000000:AAAA");
    for (int i = 0; i < n; i++)
        th_send(p, jobs, 0, "junk", "\xff\xff\xff junk", 7, i == 0 ? &h : NULL);
    assert_int_equal(bm_producer_flush(p, TH_WAIT_MS), BM_OK);
    bm_producer_free(p);
}

/* Run `biomatch audit verify` on 'topic'; returns its exit code and
 * leaves its output in 'out'. */
static int run_verify(struct th_env *e, const char *topic, char *out, size_t outlen)
{
    char exe[4096];
    bm_test_bin(exe, sizeof exe, "biomatch");
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "%s audit verify --brokers %s --topic %s --key-file %s "
             "--key-id " KEY_ID " 2>&1",
             exe, e->conf->brokers, topic, key_path);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    size_t n = fread(out, 1, outlen - 1, f);
    out[n] = '\0';
    int st = pclose(f);
    print_message("--- verify %s (exit %d):\n%s", topic, WEXITSTATUS(st), out);
    assert_true(WIFEXITED(st));
    return WEXITSTATUS(st);
}

/* Write recs[order[i]] (order ends with -1) to a new one-partition topic
 * and verify it. 'value' replaces the value of the record at position
 * 'at' (NULL: none). */
static int verify_copy(struct th_env *e, const char *name, const int *order, int at,
                       const uint8_t *value, size_t len, char *out, size_t outlen)
{
    char topic[256], err[256];
    th_topic(e, topic, sizeof topic, name);
    th_create(e, topic, 1);
    struct bm_producer *p = bm_producer_new(&e->bus, err, sizeof err);
    assert_non_null(p);
    for (int i = 0; order[i] >= 0; i++) {
        const struct th_rec *r = &recs[order[i]];
        if (i == at)
            th_send(p, topic, 0, r->key, value, len, NULL);
        else
            th_send(p, topic, 0, r->key, r->value, r->len, NULL);
    }
    assert_int_equal(bm_producer_flush(p, TH_WAIT_MS), BM_OK);
    bm_producer_free(p);
    return run_verify(e, topic, out, outlen);
}

static void test_audit_chain_across_restart_and_tampering(void **state)
{
    (void)state;
    struct th_env e;
    th_setup(&e, "audit", "intake");
    write_key();
    e.conf->security.audit_key_file = strdup(key_path);
    e.conf->security.audit_key_id = strdup(KEY_ID);
    e.conf->audit.checkpoint_interval_ms = 1000;
    char jobs[256], partials[256], results[256], dlq[256];
    bm_topic_name(jobs, sizeof jobs, e.prefix, BM_TOPIC_JOBS);
    bm_topic_name(partials, sizeof partials, e.prefix, BM_TOPIC_PARTIALS);
    bm_topic_name(results, sizeof results, e.prefix, BM_TOPIC_RESULTS);
    bm_topic_name(dlq, sizeof dlq, e.prefix, BM_TOPIC_DLQ);
    bm_topic_name(audit_topic, sizeof audit_topic, e.prefix, BM_TOPIC_AUDIT);
    th_create(&e, jobs, 1);
    th_create(&e, partials, 1);
    th_create(&e, results, 1);
    th_create(&e, dlq, 1);
    th_create(&e, audit_topic, 2);

    /* First run: three junk jobs, then a clean stop. */
    th_start(&e, bm_role_intake_run);
    send_junk(&e, jobs, 3);
    wait_jobs(&e, 3);
    assert_int_equal(th_stop(&e), BM_OK);
    /* Second run with the same node id: it must continue the chain. */
    th_start(&e, bm_role_intake_run);
    send_junk(&e, jobs, 2);
    wait_jobs(&e, 5);
    assert_int_equal(th_stop(&e), BM_OK);

    size_t total = count(&e).records;
    assert_true(total <= TH_MAX_RECS);
    nrecs = th_collect(&e, audit_topic, 2, (int)total, 0, recs, TH_MAX_RECS);
    assert_int_equal(nrecs, total);
    assert_true(nrecs >= 7); /* 5 jobs + 2 final checkpoints (+ timed ones) */

    /* One writer, one partition, seqs 1..n in topic order, every hash
     * recomputed here, every prev_hash the hash before it. */
    uint8_t key[32], prev[32];
    key_bytes(key);
    int finals = 0, signed_seen = 0;
    size_t first_after_restart = 0;
    for (size_t i = 0; i < nrecs; i++) {
        Biomatch__V1__AuditRecord *a = decode(&recs[i]);
        assert_string_equal(a->writer, "test-audit/intake");
        assert_string_equal(recs[i].key, "test-audit/intake");
        assert_int_equal(recs[i].partition, recs[0].partition);
        assert_int_equal(a->seq, i + 1);
        assert_string_equal(a->key_id, KEY_ID);
        assert_int_equal(a->hash.len, 32);
        uint8_t stored[32], mac[32];
        memcpy(stored, a->hash.data, 32);
        a->hash.len = 0;
        size_t len = biomatch__v1__audit_record__get_packed_size(a);
        uint8_t *buf = malloc(len);
        assert_non_null(buf);
        biomatch__v1__audit_record__pack(a, buf);
        unsigned int maclen = 0;
        assert_non_null(HMAC(EVP_sha256(), key, 32, buf, len, mac, &maclen));
        free(buf);
        assert_memory_equal(mac, stored, 32);
        if (i == 0) {
            assert_int_equal(a->prev_hash.len, 0);
        } else {
            assert_int_equal(a->prev_hash.len, 32);
            assert_memory_equal(a->prev_hash.data, prev, 32);
        }
        if (strcmp(a->signer_key_id, "bp-test") == 0)
            signed_seen++;
        if (a->kind == BIOMATCH__V1__AUDIT_RECORD__KIND__KIND_CHECKPOINT && a->checkpoint_final) {
            finals++;
            if (finals == 1)
                first_after_restart = i + 1;
        }
        memcpy(prev, stored, 32);
        biomatch__v1__audit_record__free_unpacked(a, NULL);
    }
    assert_int_equal(finals, 2);
    assert_int_equal(signed_seen, 2); /* the first junk record of each run */
    /* The chain went on after the first run's final checkpoint. */
    assert_true(first_after_restart > 3 && first_after_restart < nrecs);
    Biomatch__V1__AuditRecord *last = decode(&recs[nrecs - 1]);
    assert_int_equal(last->kind, BIOMATCH__V1__AUDIT_RECORD__KIND__KIND_CHECKPOINT);
    assert_true(last->checkpoint_final);
    biomatch__v1__audit_record__free_unpacked(last, NULL);

    char out[16384];
    /* The real topic verifies. */
    assert_int_equal(run_verify(&e, audit_topic, out, sizeof out), 0);
    assert_non_null(strstr(out, " 0 findings"));

    int order[TH_MAX_RECS + 2];
    int n = (int)nrecs;
    for (int i = 0; i < n; i++)
        order[i] = i;
    order[n] = -1;

    /* Modified: record 2's agency/id changed, its hash kept. */
    Biomatch__V1__AuditRecord *a = decode(&recs[1]);
    char *id = a->id;
    a->id = (char *)"someone-else";
    size_t mlen = biomatch__v1__audit_record__get_packed_size(a);
    uint8_t *mod = malloc(mlen);
    assert_non_null(mod);
    biomatch__v1__audit_record__pack(a, mod);
    a->id = id;
    biomatch__v1__audit_record__free_unpacked(a, NULL);
    assert_int_equal(verify_copy(&e, "copy-modified", order, 1, mod, mlen, out, sizeof out), 1);
    assert_non_null(strstr(out, "MODIFIED partition=0 offset=1 "));
    free(mod);

    /* Deleted: record 3 left out. */
    int del[TH_MAX_RECS + 2], k = 0;
    for (int i = 0; i < n; i++)
        if (i != 2)
            del[k++] = i;
    del[k] = -1;
    assert_int_equal(verify_copy(&e, "copy-deleted", del, -1, NULL, 0, out, sizeof out), 1);
    assert_non_null(strstr(out, "DELETED partition=0 offset=2 "));

    /* Inserted: a valid record replayed at the end. */
    int ins[TH_MAX_RECS + 2];
    for (int i = 0; i < n; i++)
        ins[i] = i;
    ins[n] = 1;
    ins[n + 1] = -1;
    assert_int_equal(verify_copy(&e, "copy-inserted", ins, -1, NULL, 0, out, sizeof out), 1);
    char want[64];
    snprintf(want, sizeof want, "INSERTED partition=0 offset=%d ", n);
    assert_non_null(strstr(out, want));

    /* Truncated: the last two records (with the final checkpoint) gone,
     * read more than two checkpoint intervals later. */
    struct timespec ts = {2, 500000000L};
    nanosleep(&ts, NULL);
    order[n - 2] = -1;
    assert_int_equal(verify_copy(&e, "copy-truncated", order, -1, NULL, 0, out, sizeof out), 1);
    snprintf(want, sizeof want, "TRUNCATED partition=0 offset=%d ", n - 3);
    assert_non_null(strstr(out, want));

    th_free(recs, nrecs);
    unlink(key_path);
    th_teardown(&e);
}

int main(void)
{
    bm_log_init("test_audit");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_audit_chain_across_restart_and_tampering),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
