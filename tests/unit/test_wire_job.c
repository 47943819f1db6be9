/* MatchJob validation: a valid IDENTIFY and VERIFY job, then one failure per
 * rule of docs/wire.md with the ErrorCode intake puts in the REJECTED
 * result. Time is passed in, so no test depends on the clock. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "wire/job.h"
#include "wire/template.h"

#define EC(x) BIOMATCH__V1__ERROR_CODE__ERROR_CODE_##x
#define DIM 128
#define NOW INT64_C(1700000000000)

static char err[256];

struct fixture {
    Biomatch__V1__GalleryDefinition g;
    Biomatch__V1__MatchJob job;
    Biomatch__V1__Template t[3];
    Biomatch__V1__DenseEmbedding d[3];
    Biomatch__V1__Template *probes[20];
    uint8_t data[3][DIM];
    Biomatch__V1__MatchJob__AttributesEntry attr;
    Biomatch__V1__MatchJob__AttributesEntry *attrs[40];
};

/* A valid int8 IDENTIFY job with 'np' probes (np <= 3). */
static void setup_job(struct fixture *f, size_t np)
{
    memset(f, 0, sizeof *f);
    Biomatch__V1__GalleryDefinition gi = BIOMATCH__V1__GALLERY_DEFINITION__INIT;
    f->g = gi;
    f->g.name = (char *)"faces";
    f->g.modality = BIOMATCH__V1__MODALITY__MODALITY_FINGERPRINT;
    f->g.dim = DIM;
    f->g.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_INT8;
    f->g.shards = 4, f->g.replicas = 2;
    for (size_t k = 0; k < 3; k++) {
        Biomatch__V1__Template ti = BIOMATCH__V1__TEMPLATE__INIT;
        Biomatch__V1__DenseEmbedding di = BIOMATCH__V1__DENSE_EMBEDDING__INIT;
        f->t[k] = ti, f->d[k] = di;
        f->t[k].modality = BIOMATCH__V1__MODALITY__MODALITY_FINGERPRINT;
        f->t[k].kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
        f->t[k].dense = &f->d[k];
        f->d[k].dim = DIM;
        f->d[k].element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_INT8;
        f->d[k].scale = 0.01f;
        for (size_t i = 0; i < DIM; i++)
            f->data[k][i] = (uint8_t)(i + k);
        f->d[k].data.data = f->data[k], f->d[k].data.len = DIM;
    }
    for (size_t i = 0; i < 20; i++)
        f->probes[i] = &f->t[i % 3];
    Biomatch__V1__MatchJob ji = BIOMATCH__V1__MATCH_JOB__INIT;
    f->job = ji;
    f->job.job_id = (char *)"job-7";
    f->job.agency = (char *)"border-police";
    f->job.gallery = (char *)"faces";
    f->job.mode = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY;
    f->job.n_probes = np, f->job.probes = f->probes;
    f->job.top_k = 10;
    Biomatch__V1__MatchJob__AttributesEntry ai = BIOMATCH__V1__MATCH_JOB__ATTRIBUTES_ENTRY__INIT;
    f->attr = ai;
    f->attr.key = (char *)"case", f->attr.value = (char *)"17";
    for (size_t i = 0; i < 40; i++)
        f->attrs[i] = &f->attr;
}

static Biomatch__V1__ErrorCode run(struct fixture *f, const struct bm_wire_limits *l)
{
    Biomatch__V1__ErrorCode code = (Biomatch__V1__ErrorCode)-1;
    err[0] = '\0';
    int rc = bm_wire_validate_job(&f->job, &f->g, NOW, l, &code, err, sizeof err);
    if (code == EC(NONE))
        assert_int_equal(rc, BM_OK);
    else {
        assert_int_equal(rc, BM_EINVAL);
        assert_true(strlen(err) > 0);
    }
    return code;
}

static void test_valid_jobs(void **state)
{
    (void)state;
    struct fixture f;
    setup_job(&f, 3);
    assert_int_equal(run(&f, NULL), EC(NONE));
    f.job.deadline_unix_ms = NOW + 300000; /* exactly the maximum */
    f.job.has_threshold = 1, f.job.threshold = 0.4f;
    f.job.reply_topic = (char *)"biomatch.results.border";
    f.job.n_attributes = 1, f.job.attributes = f.attrs;
    assert_int_equal(run(&f, NULL), EC(NONE));
    f.job.mode = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_VERIFY;
    f.job.claimed_subject = (char *)"subject-1";
    f.job.top_k = 0; /* meaningless for VERIFY, accepted */
    assert_int_equal(run(&f, NULL), EC(NONE));
}

static void test_ids_and_strings(void **state)
{
    (void)state;
    struct fixture f;
    char long_id[130];
    memset(long_id, 'x', 129);
    long_id[129] = '\0';

    setup_job(&f, 1);
    f.job.job_id = (char *)"";
    assert_int_equal(run(&f, NULL), EC(MISSING_FIELD));
    f.job.job_id = long_id;
    assert_int_equal(run(&f, NULL), EC(INVALID_VALUE));
    long_id[128] = '\0'; /* exactly 128 bytes is fine */
    assert_int_equal(run(&f, NULL), EC(NONE));
    f.job.job_id = (char *)"bad\xc3\x28utf8";
    assert_int_equal(run(&f, NULL), EC(INVALID_VALUE));
    f.job.job_id = (char *)"\xed\xa0\x80"; /* a UTF-16 surrogate */
    assert_int_equal(run(&f, NULL), EC(INVALID_VALUE));
    f.job.job_id = (char *)"\xc0\xaf"; /* overlong '/' */
    assert_int_equal(run(&f, NULL), EC(INVALID_VALUE));
    f.job.job_id = (char *)"\xf0\x9f\x98\x80-ok"; /* 4-byte sequence */
    assert_int_equal(run(&f, NULL), EC(NONE));

    setup_job(&f, 1);
    f.job.agency = (char *)"";
    assert_int_equal(run(&f, NULL), EC(MISSING_FIELD));
    setup_job(&f, 1);
    f.job.reply_topic = (char *)"results/../x";
    assert_int_equal(run(&f, NULL), EC(INVALID_VALUE));
    setup_job(&f, 1);
    f.job.n_attributes = 33, f.job.attributes = f.attrs;
    assert_int_equal(run(&f, NULL), EC(TOO_LARGE));
}

static void test_gallery_and_mode(void **state)
{
    (void)state;
    struct fixture f;
    setup_job(&f, 1);
    f.job.gallery = (char *)"irises";
    assert_int_equal(run(&f, NULL), EC(UNKNOWN_GALLERY));
    setup_job(&f, 1);
    Biomatch__V1__ErrorCode code;
    assert_int_equal(bm_wire_validate_job(&f.job, NULL, NOW, NULL, &code, err, sizeof err),
                     BM_EINVAL);
    assert_int_equal(code, EC(UNKNOWN_GALLERY));
    f.job.gallery = (char *)"";
    assert_int_equal(run(&f, NULL), EC(MISSING_FIELD));

    setup_job(&f, 1);
    f.job.mode = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_UNSPECIFIED;
    assert_int_equal(run(&f, NULL), EC(MISSING_FIELD));
    f.job.mode = (Biomatch__V1__MatchMode)3; /* reserved DEDUPLICATE */
    assert_int_equal(run(&f, NULL), EC(UNSUPPORTED));
    f.job.mode = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_VERIFY;
    assert_int_equal(run(&f, NULL), EC(MISSING_FIELD));
    assert_non_null(strstr(err, "claimed_subject"));
}

static void test_top_k_threshold_deadline(void **state)
{
    (void)state;
    struct fixture f;
    setup_job(&f, 1);
    f.job.top_k = 0;
    assert_int_equal(run(&f, NULL), EC(INVALID_TOP_K));
    f.job.top_k = 1000;
    assert_int_equal(run(&f, NULL), EC(NONE));
    f.job.top_k = 1001;
    assert_int_equal(run(&f, NULL), EC(INVALID_TOP_K));
    struct bm_wire_limits l;
    bm_wire_limits_default(&l);
    l.max_top_k = 5;
    f.job.top_k = 6;
    assert_int_equal(run(&f, &l), EC(INVALID_TOP_K));

    setup_job(&f, 1);
    f.job.has_threshold = 1, f.job.threshold = NAN;
    assert_int_equal(run(&f, NULL), EC(INVALID_VALUE));
    f.job.has_threshold = 0; /* ignored when not set */
    assert_int_equal(run(&f, NULL), EC(NONE));

    setup_job(&f, 1);
    f.job.deadline_unix_ms = NOW;
    assert_int_equal(run(&f, NULL), EC(INVALID_DEADLINE));
    f.job.deadline_unix_ms = NOW - 1;
    assert_int_equal(run(&f, NULL), EC(INVALID_DEADLINE));
    f.job.deadline_unix_ms = NOW + 300001;
    assert_int_equal(run(&f, NULL), EC(INVALID_DEADLINE));
    f.job.deadline_unix_ms = INT64_MAX;
    assert_int_equal(run(&f, NULL), EC(INVALID_DEADLINE));
    f.job.deadline_unix_ms = -5;
    assert_int_equal(run(&f, NULL), EC(INVALID_DEADLINE));
    f.job.deadline_unix_ms = NOW + 1;
    assert_int_equal(run(&f, NULL), EC(NONE));

    /* max_clock_skew_ms: a deadline just behind our clock is the client's
     * clock running late, accepted; one further back is still refused. */
    struct bm_wire_limits sk;
    bm_wire_limits_default(&sk);
    sk.max_clock_skew_ms = 2000;
    f.job.deadline_unix_ms = NOW;
    assert_int_equal(run(&f, &sk), EC(NONE));
    f.job.deadline_unix_ms = NOW - 1999;
    assert_int_equal(run(&f, &sk), EC(NONE));
    f.job.deadline_unix_ms = NOW - 2000;
    assert_int_equal(run(&f, &sk), EC(INVALID_DEADLINE));
    f.job.deadline_unix_ms = -5;
    assert_int_equal(run(&f, &sk), EC(INVALID_DEADLINE));
    f.job.deadline_unix_ms = NOW + 300000;
    assert_int_equal(run(&f, &sk), EC(NONE));
    f.job.deadline_unix_ms = NOW + 300001;
    assert_int_equal(run(&f, &sk), EC(INVALID_DEADLINE));
}

static void test_probes(void **state)
{
    (void)state;
    struct fixture f;
    setup_job(&f, 0);
    assert_int_equal(run(&f, NULL), EC(MISSING_FIELD));
    setup_job(&f, 1);
    f.job.n_probes = 16;
    assert_int_equal(run(&f, NULL), EC(NONE));
    f.job.n_probes = 17;
    assert_int_equal(run(&f, NULL), EC(TOO_LARGE));

    /* The second probe is bad: the message names it. */
    setup_job(&f, 3);
    memset(f.data[1], 0, DIM);
    assert_int_equal(run(&f, NULL), EC(INVALID_VALUE));
    assert_non_null(strstr(err, "probe 1"));
    setup_job(&f, 2);
    f.d[1].dim = 64;
    assert_int_equal(run(&f, NULL), EC(GEOMETRY_MISMATCH));
    setup_job(&f, 2);
    f.d[0].scale = 0.0f;
    assert_int_equal(run(&f, NULL), EC(INVALID_VALUE));

    /* A corrupt gallery definition is an internal error, not the client's. */
    setup_job(&f, 1);
    f.g.shards = 0;
    assert_int_equal(run(&f, NULL), EC(INTERNAL));
}

/* A task of the fixture's job for shard 1 of 4: valid, then one failure
 * per rule the worker relies on, with the job's limits. */
static Biomatch__V1__ErrorCode run_task(const Biomatch__V1__MatchTask *t,
                                        const struct fixture *f)
{
    Biomatch__V1__ErrorCode code = (Biomatch__V1__ErrorCode)-1;
    err[0] = '\0';
    int rc = bm_wire_validate_task(t, &f->g, 1, NULL, &code, err, sizeof err);
    assert_int_equal(rc, code == EC(NONE) ? BM_OK : BM_EINVAL);
    if (code != EC(NONE))
        assert_true(err[0] != '\0');
    return code;
}

static void test_tasks(void **state)
{
    (void)state;
    static struct fixture f;
    setup_job(&f, 2);
    Biomatch__V1__MatchTask t0 = BIOMATCH__V1__MATCH_TASK__INIT;
    t0.job_id = (char *)"job-7";
    t0.gallery = (char *)"faces";
    t0.shard = 1, t0.shard_count = 4;
    t0.mode = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY;
    t0.top_k = 10;
    t0.n_probes = 2, t0.probes = f.probes;
    Biomatch__V1__MatchTask t = t0;
    assert_int_equal(run_task(&t, &f), EC(NONE));
    t.mode = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_VERIFY, t.top_k = 0;
    t.claimed_subject = (char *)"p-1";
    assert_int_equal(run_task(&t, &f), EC(NONE));
    t.claimed_subject = (char *)"";
    assert_int_equal(run_task(&t, &f), EC(MISSING_FIELD));

    t = t0, t.job_id = (char *)"";
    assert_int_equal(run_task(&t, &f), EC(MISSING_FIELD));
    t = t0, t.job_id = (char *)"\xc0\xaf";
    assert_int_equal(run_task(&t, &f), EC(INVALID_VALUE));
    t = t0, t.gallery = (char *)"irises";
    assert_int_equal(run_task(&t, &f), EC(UNKNOWN_GALLERY));
    t = t0, t.shard = 2;
    assert_int_equal(run_task(&t, &f), EC(INVALID_VALUE));
    t = t0, t.shard_count = 8;
    assert_int_equal(run_task(&t, &f), EC(INVALID_VALUE));
    t = t0, t.mode = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_UNSPECIFIED;
    assert_int_equal(run_task(&t, &f), EC(MISSING_FIELD));
    t = t0, t.mode = (Biomatch__V1__MatchMode)9;
    assert_int_equal(run_task(&t, &f), EC(UNSUPPORTED));
    t = t0, t.top_k = 0;
    assert_int_equal(run_task(&t, &f), EC(INVALID_TOP_K));
    t = t0, t.top_k = 1001;
    assert_int_equal(run_task(&t, &f), EC(INVALID_TOP_K));
    t = t0, t.has_threshold = 1, t.threshold = NAN;
    assert_int_equal(run_task(&t, &f), EC(INVALID_VALUE));
    t = t0, t.n_probes = 0;
    assert_int_equal(run_task(&t, &f), EC(MISSING_FIELD));
    t = t0, t.n_probes = 17;
    assert_int_equal(run_task(&t, &f), EC(TOO_LARGE));
    f.d[1].dim = DIM / 2;
    t = t0;
    assert_int_equal(run_task(&t, &f), EC(GEOMETRY_MISMATCH));
}

static void test_helpers(void **state)
{
    (void)state;
    assert_true(bm_wire_subject_id_valid("s-1"));
    assert_false(bm_wire_subject_id_valid(""));
    assert_false(bm_wire_subject_id_valid(NULL));
    assert_false(bm_wire_subject_id_valid("\xff"));
    assert_true(bm_wire_topic_valid("biomatch.results"));
    assert_false(bm_wire_topic_valid(".."));
    assert_false(bm_wire_topic_valid("a b"));
    assert_true(bm_wire_utf8_valid("", 0));
    assert_false(bm_wire_utf8_valid("\xe2\x82", 2)); /* truncated */
    assert_false(bm_wire_utf8_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_jobs),
        cmocka_unit_test(test_ids_and_strings),
        cmocka_unit_test(test_gallery_and_mode),
        cmocka_unit_test(test_top_k_threshold_deadline),
        cmocka_unit_test(test_probes),
        cmocka_unit_test(test_tasks),
        cmocka_unit_test(test_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
