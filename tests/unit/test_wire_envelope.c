/* Envelopes, decoders and headers of the wire layer: raw vs Schema Registry
 * detection both ways, a truncated SR header at every length, hostile
 * varints, the size limit checked before any byte is read, and encode/decode
 * round trips of every message type in both framings. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "wire/decode.h"
#include "wire/envelope.h"
#include "wire/headers.h"

static char err[256];

static void test_raw_detected(void **state)
{
    (void)state;
    const uint8_t raw[] = {0x0a, 0x03, 'j', '-', '1'}; /* job_id = "j-1" */
    struct bm_envelope e;
    assert_int_equal(bm_envelope_unwrap(raw, sizeof raw, 1024, &e, err, sizeof err), BM_OK);
    assert_int_equal(e.kind, BM_ENVELOPE_RAW);
    assert_ptr_equal(e.payload, raw);
    assert_int_equal(e.payload_len, sizeof raw);
    assert_int_equal(e.schema_id, 0);

    /* An empty value is a valid raw message with every field default. */
    assert_int_equal(bm_envelope_unwrap(NULL, 0, 1024, &e, err, sizeof err), BM_OK);
    assert_int_equal(e.kind, BM_ENVELOPE_RAW);
    assert_int_equal(e.payload_len, 0);
}

static void test_sr_short_form(void **state)
{
    (void)state;
    const uint8_t sr[] = {0x00, 0x00, 0x01, 0x02, 0x03, 0x00, 0x0a, 0x01, 'x'};
    struct bm_envelope e;
    assert_int_equal(bm_envelope_unwrap(sr, sizeof sr, 1024, &e, err, sizeof err), BM_OK);
    assert_int_equal(e.kind, BM_ENVELOPE_SR);
    assert_int_equal(e.schema_id, 0x00010203);
    assert_int_equal(e.nindexes, 1);
    assert_int_equal(e.indexes[0], 0);
    assert_ptr_equal(e.payload, sr + 6);
    assert_int_equal(e.payload_len, 3);
}

static void test_sr_long_form(void **state)
{
    (void)state;
    /* count 2 (zigzag 4), indexes [4, 1] (zigzag 8, 2); schema id 0xfffffffe */
    const uint8_t sr[] = {0x00, 0xff, 0xff, 0xff, 0xfe, 0x04, 0x08, 0x02, 0x0a, 0x00};
    struct bm_envelope e;
    assert_int_equal(bm_envelope_unwrap(sr, sizeof sr, 1024, &e, err, sizeof err), BM_OK);
    assert_int_equal(e.kind, BM_ENVELOPE_SR);
    assert_int_equal(e.schema_id, 0xfffffffeu);
    assert_int_equal(e.nindexes, 2);
    assert_int_equal(e.indexes[0], 4);
    assert_int_equal(e.indexes[1], 1);
    assert_int_equal(e.payload_len, 2);

    /* Multi-byte varint: index 300 = zigzag 600 = 0xd8 0x04. */
    const uint8_t sr2[] = {0x00, 0, 0, 0, 7, 0x02, 0xd8, 0x04};
    assert_int_equal(bm_envelope_unwrap(sr2, sizeof sr2, 1024, &e, err, sizeof err), BM_OK);
    assert_int_equal(e.nindexes, 1);
    assert_int_equal(e.indexes[0], 300);
    assert_int_equal(e.payload_len, 0);
}

static void test_sr_truncated_every_length(void **state)
{
    (void)state;
    const uint32_t path[] = {3, 200, 70000};
    const uint8_t payload[] = {0x08, 0x01};
    size_t n;
    uint8_t *b = bm_envelope_wrap_sr(42, path, 3, payload, sizeof payload, &n);
    assert_non_null(b);
    size_t header = n - sizeof payload;
    /* Every proper prefix of the header is refused; from the full header on
     * the rest is payload. Each prefix sits in its own allocation so ASan
     * catches any read past it. */
    for (size_t len = 1; len <= n; len++) {
        uint8_t *p = malloc(len);
        memcpy(p, b, len);
        struct bm_envelope e;
        int rc = bm_envelope_unwrap(p, len, 1024, &e, err, sizeof err);
        if (len < header) {
            assert_int_equal(rc, BM_EPROTO);
            assert_null(e.payload);
        } else {
            assert_int_equal(rc, BM_OK);
            assert_int_equal(e.schema_id, 42);
            assert_int_equal(e.nindexes, 3);
            assert_int_equal(e.indexes[2], 70000);
            assert_int_equal(e.payload_len, len - header);
        }
        free(p);
    }
    free(b);
}

static void test_sr_hostile_varints(void **state)
{
    (void)state;
    struct bm_envelope e;
    /* 6-byte varint count. */
    const uint8_t a[] = {0, 0, 0, 0, 1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00};
    assert_int_equal(bm_envelope_unwrap(a, sizeof a, 1024, &e, err, sizeof err), BM_EPROTO);
    /* 5-byte varint whose last byte carries bits above 32. */
    const uint8_t b[] = {0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x1f};
    assert_int_equal(bm_envelope_unwrap(b, sizeof b, 1024, &e, err, sizeof err), BM_EPROTO);
    /* Largest 32-bit varint is fine as a value but a huge count is refused. */
    const uint8_t c[] = {0, 0, 0, 0, 1, 0xfe, 0xff, 0xff, 0xff, 0x0f};
    assert_int_equal(bm_envelope_unwrap(c, sizeof c, 1024, &e, err, sizeof err), BM_EPROTO);
    /* Negative count (zigzag 1 = -1). */
    const uint8_t d[] = {0, 0, 0, 0, 1, 0x01};
    assert_int_equal(bm_envelope_unwrap(d, sizeof d, 1024, &e, err, sizeof err), BM_EPROTO);
    /* Negative index. */
    const uint8_t f[] = {0, 0, 0, 0, 1, 0x02, 0x03};
    assert_int_equal(bm_envelope_unwrap(f, sizeof f, 1024, &e, err, sizeof err), BM_EPROTO);
    /* Count over BM_ENVELOPE_MAX_INDEXES. */
    uint8_t g[6 + BM_ENVELOPE_MAX_INDEXES + 1] = {0, 0, 0, 0, 1,
                                                  (uint8_t)(2 * (BM_ENVELOPE_MAX_INDEXES + 1))};
    assert_int_equal(bm_envelope_unwrap(g, sizeof g, 1024, &e, err, sizeof err), BM_EPROTO);
    /* Exactly the maximum depth is accepted. */
    g[5] = (uint8_t)(2 * BM_ENVELOPE_MAX_INDEXES);
    assert_int_equal(bm_envelope_unwrap(g, sizeof g - 1, 1024, &e, err, sizeof err), BM_OK);
    assert_int_equal(e.nindexes, BM_ENVELOPE_MAX_INDEXES);
    /* Unterminated index varint at the end of the buffer. */
    const uint8_t h[] = {0, 0, 0, 0, 1, 0x02, 0x80};
    assert_int_equal(bm_envelope_unwrap(h, sizeof h, 1024, &e, err, sizeof err), BM_EPROTO);
}

static void test_max_len_before_anything(void **state)
{
    (void)state;
    struct bm_envelope e;
    /* The size check must come first: a NULL buffer with a huge length is
     * refused without being touched. */
    assert_int_equal(bm_envelope_unwrap(NULL, (size_t)1 << 40, 1024, &e, err, sizeof err),
                     BM_ERANGE);
    assert_non_null(strstr(err, "limit"));
    ProtobufCMessage *m = (ProtobufCMessage *)0x1;
    assert_int_equal(bm_wire_decode(&biomatch__v1__match_job__descriptor, NULL, 5000, 4999, &m,
                                    NULL, err, sizeof err),
                     BM_ERANGE);
    assert_null(m);
    assert_int_equal(bm_wire_error_of(BM_ERANGE), BIOMATCH__V1__ERROR_CODE__ERROR_CODE_TOO_LARGE);
    assert_int_equal(bm_wire_error_of(BM_EPROTO), BIOMATCH__V1__ERROR_CODE__ERROR_CODE_MALFORMED);
    uint8_t one = 0x0a;
    assert_int_equal(bm_envelope_unwrap(&one, 1, 1, &e, err, sizeof err), BM_OK);
    assert_int_equal(bm_envelope_unwrap(&one, 1, 0, &e, err, sizeof err), BM_ERANGE);
}

static void test_wrap_sr_limits(void **state)
{
    (void)state;
    size_t n;
    uint32_t deep[BM_ENVELOPE_MAX_INDEXES + 1] = {0};
    assert_null(bm_envelope_wrap_sr(1, deep, BM_ENVELOPE_MAX_INDEXES + 1, NULL, 0, &n));
    uint32_t big = 0x80000000u;
    assert_null(bm_envelope_wrap_sr(1, &big, 1, NULL, 0, &n));
    uint8_t *b = bm_envelope_wrap_sr(7, NULL, 0, NULL, 0, &n);
    assert_non_null(b);
    assert_int_equal(n, 6);
    const uint8_t want[] = {0, 0, 0, 0, 7, 0};
    assert_memory_equal(b, want, 6);
    free(b);
}

static void test_malformed_protobuf(void **state)
{
    (void)state;
    /* Field 1 (string) claims 100 bytes but only 2 follow. */
    const uint8_t bad[] = {0x0a, 0x64, 'a', 'b'};
    assert_null(bm_wire_decode_job(bad, sizeof bad, 1024, err, sizeof err));
    assert_true(strlen(err) > 0);
    ProtobufCMessage *m;
    assert_int_equal(bm_wire_decode(&biomatch__v1__match_job__descriptor, bad, sizeof bad, 1024,
                                    &m, NULL, err, sizeof err),
                     BM_EPROTO);
    /* The same bytes behind a valid SR header are still malformed. */
    size_t n;
    uint8_t *sr = bm_envelope_wrap_sr(9, NULL, 0, bad, sizeof bad, &n);
    assert_null(bm_wire_decode_job(sr, n, 1024, err, sizeof err));
    free(sr);
    /* Field number 0 (a 0x00..0x07 first byte) never decodes as raw. */
    const uint8_t zero_field[] = {0x02, 0x00};
    assert_null(bm_wire_decode_job(zero_field, sizeof zero_field, 1024, err, sizeof err));

    /* Field 0 behind a non-minimal tag varint (0x80 0x00): protobuf-c
     * keeps it as an unknown field; we refuse it (found by fuzz_decode_job). */
    const uint8_t fz[] = {0x80, 0x00, 0x99, 0x3e, 0x48, 0xe0, 0xa4, 0x99, 0xff, 0xbc, 0x01};
    assert_null(bm_wire_decode_job(fz, sizeof fz, 1024, err, sizeof err));
    assert_non_null(strstr(err, "field number 0"));
    /* The same trick nested: job { probes { dense { <field 0> dim: 64 } } }. */
    const uint8_t nested[] = {0x2a, 0x07, 0x12, 0x05, 0x80, 0x00, 0x01, 0x08, 0x40};
    assert_null(bm_wire_decode_job(nested, sizeof nested, 1024, err, sizeof err));
    assert_non_null(strstr(err, "field number 0"));
    const uint8_t nested_ok[] = {0x2a, 0x04, 0x12, 0x02, 0x08, 0x40};
    Biomatch__V1__MatchJob *j = bm_wire_decode_job(nested_ok, sizeof nested_ok, 1024, err,
                                                   sizeof err);
    assert_non_null(j);
    assert_int_equal(j->probes[0]->dense->dim, 64);
    bm_wire_free_job(j);
}

/* Encode m raw and SR-framed, decode both with 'desc', and require the
 * decoded message to re-encode to the very same bytes. */
static void roundtrip(const ProtobufCMessage *m)
{
    size_t n;
    uint8_t *raw = bm_wire_encode(m, &n);
    assert_non_null(raw);
    for (int framing = 0; framing < 2; framing++) {
        size_t fl = n;
        uint8_t *buf = raw;
        const uint32_t path[] = {1, 2};
        if (framing == 1)
            buf = bm_wire_encode_sr(m, 1234, path, 2, &fl);
        assert_non_null(buf);
        ProtobufCMessage *d;
        struct bm_envelope e;
        assert_int_equal(bm_wire_decode(m->descriptor, buf, fl, fl, &d, &e, err, sizeof err),
                         BM_OK);
        assert_int_equal(e.kind, framing ? BM_ENVELOPE_SR : BM_ENVELOPE_RAW);
        if (framing)
            assert_int_equal(e.schema_id, 1234);
        size_t n2;
        uint8_t *again = bm_wire_encode(d, &n2);
        assert_int_equal(n2, n);
        assert_memory_equal(again, raw, n);
        free(again);
        bm_wire_free(d);
        if (buf != raw)
            free(buf);
    }
    free(raw);
}

static void test_roundtrip_every_message(void **state)
{
    (void)state;
    uint8_t vec[64 * 4];
    for (size_t i = 0; i < sizeof vec; i++)
        vec[i] = (uint8_t)(i * 7 + 1);
    Biomatch__V1__DenseEmbedding de = BIOMATCH__V1__DENSE_EMBEDDING__INIT;
    de.dim = 64;
    de.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32;
    de.data.data = vec;
    de.data.len = sizeof vec;
    Biomatch__V1__Template tpl = BIOMATCH__V1__TEMPLATE__INIT;
    tpl.modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
    tpl.kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
    tpl.dense = &de;
    roundtrip(&tpl.base);

    Biomatch__V1__IrisGeometry geo = BIOMATCH__V1__IRIS_GEOMETRY__INIT;
    geo.filters = 2, geo.rows = 16, geo.columns = 256, geo.bits_per_cell = 2;
    Biomatch__V1__IrisCode ic = BIOMATCH__V1__IRIS_CODE__INIT;
    ic.geometry = &geo;
    ic.code.data = vec, ic.code.len = 32;
    ic.mask.data = vec + 32, ic.mask.len = 32;
    Biomatch__V1__Template itpl = BIOMATCH__V1__TEMPLATE__INIT;
    itpl.modality = BIOMATCH__V1__MODALITY__MODALITY_IRIS;
    itpl.kind_case = BIOMATCH__V1__TEMPLATE__KIND_IRIS;
    itpl.iris = &ic;
    roundtrip(&itpl.base);

    Biomatch__V1__Template *probes[] = {&tpl, &itpl};
    Biomatch__V1__MatchJob__AttributesEntry at = BIOMATCH__V1__MATCH_JOB__ATTRIBUTES_ENTRY__INIT;
    at.key = (char *)"case";
    at.value = (char *)"A-17";
    Biomatch__V1__MatchJob__AttributesEntry *ats[] = {&at};
    Biomatch__V1__MatchJob job = BIOMATCH__V1__MATCH_JOB__INIT;
    job.job_id = (char *)"job-1";
    job.agency = (char *)"border";
    job.gallery = (char *)"faces";
    job.mode = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY;
    job.n_probes = 2, job.probes = probes;
    job.top_k = 10, job.threshold = 0.5f, job.has_threshold = 1;
    job.deadline_unix_ms = 1700000000000, job.reply_topic = (char *)"replies";
    job.min_gallery_version = 3, job.submitted_unix_ms = 1699999999000;
    job.n_attributes = 1, job.attributes = ats;
    roundtrip(&job.base);
    {
        size_t n;
        uint8_t *b = bm_wire_encode(&job.base, &n);
        Biomatch__V1__MatchJob *d = bm_wire_decode_job(b, n, n, err, sizeof err);
        assert_non_null(d);
        assert_string_equal(d->job_id, "job-1");
        assert_int_equal(d->n_probes, 2);
        assert_int_equal(d->probes[0]->dense->data.len, sizeof vec);
        assert_memory_equal(d->probes[0]->dense->data.data, vec, sizeof vec);
        assert_true(d->has_threshold);
        assert_string_equal(d->attributes[0]->value, "A-17");
        bm_wire_free_job(d);
        /* One byte under the limit is refused even though it would decode. */
        assert_null(bm_wire_decode_job(b, n, n - 1, err, sizeof err));
        free(b);
    }

    Biomatch__V1__MatchTask task = BIOMATCH__V1__MATCH_TASK__INIT;
    task.job_id = (char *)"job-1", task.gallery = (char *)"faces";
    task.shard = 3, task.shard_count = 4, task.replica = 1;
    task.mode = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_VERIFY;
    task.n_probes = 1, task.probes = probes;
    task.claimed_subject = (char *)"s-9", task.top_k = 1;
    task.fanned_out_unix_ms = 5;
    roundtrip(&task.base);

    Biomatch__V1__Candidate c1 = BIOMATCH__V1__CANDIDATE__INIT, c2 = BIOMATCH__V1__CANDIDATE__INIT;
    c1.subject_id = (char *)"s-1", c1.score = 0.9f, c1.rank = 1, c1.shard = 2;
    c2.subject_id = (char *)"s-2", c2.score = 0.8f, c2.rank = 2, c2.probe_index = 1;
    Biomatch__V1__Candidate *cands[] = {&c1, &c2};
    Biomatch__V1__PartialResult pr = BIOMATCH__V1__PARTIAL_RESULT__INIT;
    pr.job_id = (char *)"job-1";
    pr.kind = BIOMATCH__V1__PARTIAL_RESULT__KIND__KIND_SHARD;
    pr.shard = 2, pr.shard_count = 4, pr.status = BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK;
    pr.n_candidates = 2, pr.candidates = cands, pr.gallery_version = 7, pr.comparisons = 1000;
    pr.worker = (char *)"w1", pr.traceparent = (char *)"00-x";
    roundtrip(&pr.base);

    Biomatch__V1__Timings tm = BIOMATCH__V1__TIMINGS__INIT;
    tm.submitted_unix_ms = 1, tm.completed_unix_ms = 9, tm.max_scoring_us = 77;
    Biomatch__V1__MatchResult__AttributesEntry rat =
        BIOMATCH__V1__MATCH_RESULT__ATTRIBUTES_ENTRY__INIT;
    rat.key = (char *)"k", rat.value = (char *)"v";
    Biomatch__V1__MatchResult__AttributesEntry *rats[] = {&rat};
    Biomatch__V1__MatchResult res = BIOMATCH__V1__MATCH_RESULT__INIT;
    res.job_id = (char *)"job-1", res.status = BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_PARTIAL;
    res.error_code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE;
    res.n_candidates = 2, res.candidates = cands, res.shards_answered = 3, res.shards_total = 4;
    res.coverage = 0.75f, res.timings = &tm, res.verified = 1;
    res.n_attributes = 1, res.attributes = rats;
    roundtrip(&res.base);

    Biomatch__V1__EnrollRequest er = BIOMATCH__V1__ENROLL_REQUEST__INIT;
    er.request_id = (char *)"r1", er.agency = (char *)"police", er.gallery = (char *)"faces";
    er.op = BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT, er.subject_id = (char *)"s-1";
    er.template_ = &tpl;
    roundtrip(&er.base);

    Biomatch__V1__EnrollResult ers = BIOMATCH__V1__ENROLL_RESULT__INIT;
    ers.request_id = (char *)"r1", ers.status = BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_REJECTED;
    ers.error_code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INVALID_VALUE, ers.error = (char *)"NaN";
    roundtrip(&ers.base);

    Biomatch__V1__GalleryChange gc = BIOMATCH__V1__GALLERY_CHANGE__INIT;
    gc.subject_id = (char *)"s-1", gc.template_ = &itpl, gc.enrolled_unix_ms = 42;
    roundtrip(&gc.base);

    Biomatch__V1__GalleryDefinition gd = BIOMATCH__V1__GALLERY_DEFINITION__INIT;
    gd.name = (char *)"irises", gd.modality = BIOMATCH__V1__MODALITY__MODALITY_IRIS;
    gd.iris_geometry = &geo, gd.iris_rotations = 15, gd.shards = 4, gd.replicas = 2;
    roundtrip(&gd.base);

    uint8_t sha[32] = {1, 2, 3};
    Biomatch__V1__SegmentRef sref = BIOMATCH__V1__SEGMENT_REF__INIT;
    sref.id = 5, sref.count = 100, sref.bytes = 1 << 20, sref.sha256.data = sha;
    sref.sha256.len = 32, sref.key_id = (char *)"k1";
    Biomatch__V1__SegmentRef *srefs[] = {&sref};
    char *tombs[] = {(char *)"s-3", (char *)"s-4"};
    Biomatch__V1__ShardManifest man = BIOMATCH__V1__SHARD_MANIFEST__INIT;
    man.gallery = (char *)"faces", man.shard = 1, man.version = 12, man.log_offset = 999;
    man.n_segments = 1, man.segments = srefs, man.n_tombstones = 2, man.tombstones = tombs;
    roundtrip(&man.base);

    Biomatch__V1__AuditRecord au = BIOMATCH__V1__AUDIT_RECORD__INIT;
    au.kind = BIOMATCH__V1__AUDIT_RECORD__KIND__KIND_JOB, au.writer = (char *)"c1", au.seq = 1;
    au.prev_hash.data = sha, au.prev_hash.len = 32, au.status = 1, au.candidates = 2;
    roundtrip(&au.base);

    /* An empty message encodes to zero bytes and still round-trips. */
    Biomatch__V1__Timings empty = BIOMATCH__V1__TIMINGS__INIT;
    roundtrip(&empty.base);
}

static void test_headers(void **state)
{
    (void)state;
    char ct[128];
    bm_wire_content_type(&biomatch__v1__match_result__descriptor, ct, sizeof ct);
    assert_string_equal(ct, "application/x-protobuf; proto=biomatch.v1.MatchResult");
    const ProtobufCMessageDescriptor *jd = &biomatch__v1__match_job__descriptor;
#define OK(s) bm_wire_content_type_ok(s, strlen(s), jd)
    assert_true(bm_wire_content_type_ok(NULL, 0, jd));
    assert_true(OK("application/x-protobuf"));
    assert_true(OK("application/x-protobuf; proto=biomatch.v1.MatchJob"));
    assert_true(OK("Application/X-Protobuf;proto=\"biomatch.v1.MatchJob\""));
    assert_true(OK("application/vnd.confluent.protobuf"));
    assert_true(OK("application/x-protobuf; charset=binary"));
    assert_false(OK("application/x-protobuf; proto=biomatch.v1.MatchResult"));
    assert_false(OK("application/json"));
    assert_false(OK(""));
#undef OK
    const char *tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_true(bm_wire_traceparent_valid(tp, strlen(tp)));
    assert_false(bm_wire_traceparent_valid(tp, strlen(tp) - 1));
    const char *bad[] = {
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_false(bm_wire_traceparent_valid(bad[i], strlen(bad[i])));
    const char *future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what";
    assert_true(bm_wire_traceparent_valid(future, strlen(future)));

    char e[128];
    bm_wire_dlq_error(BIOMATCH__V1__ERROR_CODE__ERROR_CODE_MALFORMED, "bad varint", e, sizeof e);
    assert_string_equal(e, "ERROR_CODE_MALFORMED: bad varint");
    assert_string_equal(bm_wire_error_code_name((Biomatch__V1__ErrorCode)999),
                        "ERROR_CODE_UNKNOWN");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_raw_detected),
        cmocka_unit_test(test_sr_short_form),
        cmocka_unit_test(test_sr_long_form),
        cmocka_unit_test(test_sr_truncated_every_length),
        cmocka_unit_test(test_sr_hostile_varints),
        cmocka_unit_test(test_max_len_before_anything),
        cmocka_unit_test(test_wrap_sr_limits),
        cmocka_unit_test(test_malformed_protobuf),
        cmocka_unit_test(test_roundtrip_every_message),
        cmocka_unit_test(test_headers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
