/* Decoding is bounded by the record's size: the heap that bm_wire_decode()
 * takes while unpacking a payload of n bytes never exceeds
 * bm_wire_decode_budget(n), whatever the bytes are.
 *
 * The heap is counted for real: this executable is linked with
 * -Wl,--wrap=malloc,--wrap=free (tests/CMakeLists.txt), so every malloc and
 * free made by code linked into it (the wire library's allocator included)
 * goes through the counters below, which add up malloc_usable_size() and
 * keep the peak. The hostile shapes are the ones that amplify most: a
 * repeated message (or map) field whose every element is empty, 2 bytes on
 * the wire for a whole struct in memory, for every such field of every
 * message type; then unknown fields. The legitimate shapes at the limits
 * (the largest valid job; a partial of 16 x 1000 candidates with short ids)
 * must still decode. */
#define _GNU_SOURCE
#include "testutil.h"

#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include "wire/decode.h"
#include "wire/job.h"
#include "wire/template.h"

void *__real_malloc(size_t size);
void __real_free(void *p);
void *__wrap_malloc(size_t size);
void __wrap_free(void *p);

static size_t live, peak;

void *__wrap_malloc(size_t size)
{
    void *p = __real_malloc(size);
    if (p != NULL) {
        live += malloc_usable_size(p);
        if (live > peak)
            peak = live;
    }
    return p;
}

void __wrap_free(void *p)
{
    if (p != NULL)
        live -= malloc_usable_size(p);
    __real_free(p);
}

static char err[256];

/* Decode 'buf' as 'desc' and return the peak heap growth during the call;
 * *rc gets the result. The message, if any, is freed after measuring, and
 * *leaked gets what stayed allocated after that (0 expected). */
static size_t decode_peak(const ProtobufCMessageDescriptor *desc, const uint8_t *buf,
                          size_t len, int *rc, size_t *leaked)
{
    ProtobufCMessage *m = NULL;
    size_t base = live;
    peak = live;
    *rc = bm_wire_decode(desc, buf, len, len, &m, NULL, err, sizeof err);
    size_t grew = peak - base;
    bm_wire_free(m);
    *leaked = live - base;
    return grew;
}

static const ProtobufCMessageDescriptor *const every_message[] = {
    &biomatch__v1__template__descriptor,       &biomatch__v1__match_job__descriptor,
    &biomatch__v1__match_task__descriptor,     &biomatch__v1__partial_result__descriptor,
    &biomatch__v1__match_result__descriptor,   &biomatch__v1__enroll_request__descriptor,
    &biomatch__v1__enroll_result__descriptor,  &biomatch__v1__gallery_change__descriptor,
    &biomatch__v1__gallery_definition__descriptor, &biomatch__v1__shard_manifest__descriptor,
    &biomatch__v1__audit_record__descriptor,
};

/* Every repeated length-delimited field of every message, filled with 1 MiB
 * of empty elements: refused (the budget runs out) with the heap inside the
 * budget. Before the budget, 1 MiB of empty probes took ~46 MiB. */
static void test_empty_elements_bounded(void **state)
{
    (void)state;
    const size_t len = 1u << 20;
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    int tried = 0;
    for (size_t d = 0; d < sizeof every_message / sizeof every_message[0]; d++) {
        const ProtobufCMessageDescriptor *desc = every_message[d];
        for (unsigned f = 0; f < desc->n_fields; f++) {
            const ProtobufCFieldDescriptor *fd = &desc->fields[f];
            if (fd->label != PROTOBUF_C_LABEL_REPEATED ||
                (fd->type != PROTOBUF_C_TYPE_MESSAGE && fd->type != PROTOBUF_C_TYPE_STRING &&
                 fd->type != PROTOBUF_C_TYPE_BYTES))
                continue;
            /* The tag as a varint: every field number here is < 2048. */
            uint32_t key = fd->id << 3 | 2;
            uint8_t tag[2] = {(uint8_t)(key | 0x80), (uint8_t)(key >> 7)};
            size_t tl = key < 0x80 ? 1 : 2;
            if (tl == 1)
                tag[0] = (uint8_t)key;
            size_t n = 0;
            for (; n + tl + 1 <= len; n += tl + 1) {
                memcpy(buf + n, tag, tl);
                buf[n + tl] = 0x00; /* an empty element */
            }
            int rc;
            size_t leaked;
            size_t grew = decode_peak(desc, buf, n, &rc, &leaked);
            print_message("%s.%s: %zu bytes -> rc %d, peak heap %zu (budget %zu)\n",
                          desc->name, fd->name, n, rc, grew, bm_wire_decode_budget(n));
            assert_int_equal(rc, BM_ERANGE);
            assert_int_equal(bm_wire_error_of(rc), BIOMATCH__V1__ERROR_CODE__ERROR_CODE_TOO_LARGE);
            assert_true(grew <= bm_wire_decode_budget(n));
            assert_int_equal(leaked, 0);
            tried++;
        }
    }
    assert_true(tried >= 9); /* probes x2, candidates x2, attributes x3, segments, tombstones */
    free(buf);
}

/* 1 MiB of 2-byte unknown varint fields: the same bound. */
static void test_unknown_fields_bounded(void **state)
{
    (void)state;
    const size_t len = 1u << 20;
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    for (size_t i = 0; i + 2 <= len; i += 2) {
        buf[i] = 15 << 3; /* field 15 (reserved in MatchJob, so unknown), varint */
        buf[i + 1] = 0x01;
    }
    int rc;
    size_t leaked;
    size_t grew = decode_peak(&biomatch__v1__match_job__descriptor, buf, len, &rc, &leaked);
    assert_int_equal(rc, BM_ERANGE);
    assert_true(grew <= bm_wire_decode_budget(len));
    assert_int_equal(leaked, 0);
    free(buf);
}

/* 'm' encoded decodes, within its budget, and leaves nothing behind. */
static void expect_decodes(const ProtobufCMessage *m, const char *what)
{
    size_t len;
    uint8_t *buf = bm_wire_encode(m, &len);
    assert_non_null(buf);
    int rc;
    size_t leaked;
    size_t grew = decode_peak(m->descriptor, buf, len, &rc, &leaked);
    print_message("%s: %zu bytes, peak heap %zu (%.2fx)\n", what, len, grew,
                  (double)grew / (double)len);
    assert_int_equal(rc, BM_OK);
    assert_true(grew <= bm_wire_decode_budget(len));
    assert_int_equal(leaked, 0);
    assert_true(len <= BM_WIRE_DEFAULT_MAX_BYTES);
    free(buf);
}

/* The largest valid job (16 probes of 4096 f32, 32 attributes of 1 KiB key
 * and value) decodes, within its budget. */
static void test_largest_valid_job_decodes(void **state)
{
    (void)state;
    struct bm_wire_limits lim;
    bm_wire_limits_default(&lim);
    Biomatch__V1__MatchJob job = BIOMATCH__V1__MATCH_JOB__INIT;
    job.job_id = (char *)"j";
    job.agency = (char *)"a";
    job.gallery = (char *)"g";
    job.mode = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY;
    job.top_k = lim.max_top_k;
    static float data[BM_WIRE_MAX_DIM];
    for (size_t i = 0; i < BM_WIRE_MAX_DIM; i++)
        data[i] = 1.0f;
    Biomatch__V1__DenseEmbedding emb = BIOMATCH__V1__DENSE_EMBEDDING__INIT;
    emb.dim = BM_WIRE_MAX_DIM;
    emb.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32;
    emb.data.data = (uint8_t *)data;
    emb.data.len = sizeof data;
    Biomatch__V1__Template t = BIOMATCH__V1__TEMPLATE__INIT;
    t.modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
    t.kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
    t.dense = &emb;
    Biomatch__V1__Template *probes[16];
    for (size_t i = 0; i < 16; i++)
        probes[i] = &t;
    job.n_probes = lim.max_probes;
    job.probes = probes;
    static char keys[32][1025], vals[32][1025];
    Biomatch__V1__MatchJob__AttributesEntry ents[32], *entp[32];
    for (size_t i = 0; i < 32; i++) {
        memset(keys[i], 'k', 1024);
        memset(vals[i], 'v', 1024);
        keys[i][0] = (char)('A' + i);
        biomatch__v1__match_job__attributes_entry__init(&ents[i]);
        ents[i].key = keys[i];
        ents[i].value = vals[i];
        entp[i] = &ents[i];
    }
    job.n_attributes = lim.max_attributes;
    job.attributes = entp;
    expect_decodes(&job.base, "largest job");
}

/* A partial of 16 probes x 1000 candidates with 1-byte subject ids, the
 * densest legitimate shape, decodes. */
static void test_dense_candidates_decode(void **state)
{
    (void)state;
    enum { N = 16 * 1000 };
    static Biomatch__V1__Candidate c[N];
    static Biomatch__V1__Candidate *cp[N];
    for (size_t i = 0; i < N; i++) {
        biomatch__v1__candidate__init(&c[i]);
        c[i].subject_id = (char *)"s";
        c[i].score = 0.5f;
        c[i].rank = (uint32_t)(i % 1000) + 1;
        c[i].probe_index = (uint32_t)(i / 1000);
        cp[i] = &c[i];
    }
    Biomatch__V1__PartialResult pr = BIOMATCH__V1__PARTIAL_RESULT__INIT;
    pr.job_id = (char *)"j";
    pr.n_candidates = N;
    pr.candidates = cp;
    expect_decodes(&pr.base, "dense partial");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_elements_bounded),
        cmocka_unit_test(test_unknown_fields_bounded),
        cmocka_unit_test(test_largest_valid_job_decodes),
        cmocka_unit_test(test_dense_candidates_decode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
