/* Topic names derived from the prefix, and gallery name rules. */
#include "testutil.h"

#include <string.h>

#include "conf/topics.h"

static void test_names(void **state)
{
    (void)state;
    char buf[BM_TOPIC_MAX];
    assert_int_equal(bm_topic_name(buf, sizeof buf, "biomatch.", BM_TOPIC_JOBS), 0);
    assert_string_equal(buf, "biomatch.jobs");
    assert_int_equal(bm_topic_name(buf, sizeof buf, "x.", BM_TOPIC_DLQ), 0);
    assert_string_equal(buf, "x.dlq");
    assert_int_equal(bm_topic_gallery(buf, sizeof buf, "biomatch.", "faces"), 0);
    assert_string_equal(buf, "biomatch.gallery.faces");
    assert_int_equal(bm_topic_tasks(buf, sizeof buf, "biomatch.", "faces"), 0);
    assert_string_equal(buf, "biomatch.tasks.faces");
}

static void test_internal_topics(void **state)
{
    (void)state;
    assert_false(bm_topic_reply_allowed("biomatch.", "biomatch.jobs"));
    assert_false(bm_topic_reply_allowed("biomatch.", "biomatch.gallery.faces"));
    assert_false(bm_topic_reply_allowed("biomatch.", "biomatch.tasks.faces"));
    assert_false(bm_topic_reply_allowed("biomatch.", "biomatch.audit"));
    /* An allow-list: names nobody listed are refused too. */
    assert_false(bm_topic_reply_allowed("biomatch.", "biomatch.jobsx"));
    assert_false(bm_topic_reply_allowed("biomatch.", "biomatch.galleries"));
    assert_false(bm_topic_reply_allowed("biomatch.", "biomatch.results."));
    assert_false(bm_topic_reply_allowed("biomatch.", "__consumer_offsets"));
    assert_false(bm_topic_reply_allowed("biomatch.", "_schemas"));
    assert_false(bm_topic_reply_allowed("", "jobs"));
    assert_true(bm_topic_reply_allowed("biomatch.", "biomatch.results"));
    assert_true(bm_topic_reply_allowed("biomatch.", "biomatch.results.agency-a"));
    assert_true(bm_topic_reply_allowed("biomatch.", "biomatch.replies.agency-a"));
    assert_true(bm_topic_reply_allowed("biomatch.", "biomatch.replies"));
    assert_true(bm_topic_reply_allowed("biomatch.", "agency-a.results"));
}

static void test_truncation_is_an_error(void **state)
{
    (void)state;
    char buf[12];
    assert_int_equal(bm_topic_name(buf, sizeof buf, "biomatch.", BM_TOPIC_PARTIALS), -1);
    assert_int_equal(bm_topic_tasks(buf, sizeof buf, "biomatch.", "faces"), -1);
}

static void test_gallery_names(void **state)
{
    (void)state;
    char buf[BM_TOPIC_MAX];
    assert_true(bm_topic_gallery_name_valid("eu-faces_2"));
    assert_false(bm_topic_gallery_name_valid(""));
    assert_false(bm_topic_gallery_name_valid(NULL));
    assert_false(bm_topic_gallery_name_valid("a.b"));
    assert_false(bm_topic_gallery_name_valid("a/b"));
    char longname[66];
    memset(longname, 'a', 65);
    longname[65] = '\0';
    assert_false(bm_topic_gallery_name_valid(longname));
    assert_int_equal(bm_topic_gallery(buf, sizeof buf, "p.", "bad name"), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_internal_topics),
        cmocka_unit_test(test_truncation_is_an_error),
        cmocka_unit_test(test_gallery_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
