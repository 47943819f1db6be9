/* Encryption at rest end to end, against the real broker and Redis with a
 * real biomatch-coordinator process (gallery role) configured with an
 * at-rest key (docs/storage.md §8, docs/internals/crypto.md):
 *
 *  1. enrolled subjects land in Redis as envelopes under key id k1: no
 *     stored value contains a stored template's bytes or a subject id
 *     (the same search finds them in the decrypted blobs, so it has
 *     teeth), and every manifest SegmentRef names k1;
 *  2. the loader with the keyring loads the shards with the right subjects,
 *     and the decrypted content is byte for byte what intake stores;
 *  3. the loader without a keyring, or with a keyring lacking k1, fails
 *     with BM_EUNSUPPORTED naming k1;
 *  4. rotation: a keyring {k2 current, k1 previous} loads the k1 shards;
 *     the coordinator restarted with that configuration seals new
 *     segments under k2, compaction converges every segment on k2, and a
 *     keyring holding only k2 then loads everything;
 *  5. the gallery's Kafka log holds every template sealed too (no template
 *     bytes or subject id in any value; each opens, bound to its subject
 *     and shard, into the change intake made): under k1 before the
 *     rotation, under k2 for what was enrolled after it;
 *  6. a coordinator that lacks k1 must not rebuild a shard from that log
 *     (it would publish the shard without its k1 subjects): with a segment
 *     deleted, nothing is published for a while; given k1 back as a
 *     previous key, it rebuilds the shard whole, under k2. */
#include "test_gallery_util.h"

#include <fcntl.h>
#include <sys/stat.h>

#include "crypto/atrest.h"
#include "crypto/keyring.h"
#include "store/loader.h"
#include "wire/decode.h"

#define SHARDS 2
#define N1 24
#define N2 12

static char keydir[128], k1path[192], k2path[192];
static char base_conf[4096];
static size_t base_len;

static const uint8_t K1[32] = {0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb,
                               0xcc, 0xdd, 0xee, 0xff, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06,
                               0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10};
static const uint8_t K2[32] = {0xf0, 0xe1, 0xd2, 0xc3, 0xb4, 0xa5, 0x96, 0x87, 0x78, 0x69, 0x5a,
                               0x4b, 0x3c, 0x2d, 0x1e, 0x0f, 0x10, 0x32, 0x54, 0x76, 0x98, 0xba,
                               0xdc, 0xfe, 0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01};

static void subject(char *buf, size_t len, int i)
{
    snprintf(buf, len, "at-rest-subject-%04d", i);
}

static void write_key(const char *path, const uint8_t *key, int hex)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    if (hex) {
        char txt[66];
        for (int i = 0; i < 32; i++)
            snprintf(txt + 2 * i, 3, "%02x", key[i]);
        txt[64] = '\n';
        assert_int_equal(write(fd, txt, 65), 65);
    } else {
        assert_int_equal(write(fd, key, 32), 32);
    }
    close(fd);
}

/* The coordinator's config: gt_setup's file plus a security section. */
static void write_conf(struct gt *g, const char *cur_id, const char *cur_path,
                       const char *prev)
{
    FILE *f = fopen(g->config, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(base_conf, 1, base_len, f), base_len);
    fprintf(f, "security:\n  at_rest_key_file: \"%s\"\n  at_rest_key_id: %s\n", cur_path,
            cur_id);
    if (prev != NULL)
        fprintf(f, "  at_rest_previous_keys: [\"%s\"]\n", prev);
    fclose(f);
}

static struct bm_keyring *ring(const char *cur_id, const uint8_t *cur, const char *prev_id,
                               const uint8_t *prev)
{
    char err[256];
    struct bm_keyring *kr = bm_keyring_new();
    assert_non_null(kr);
    if (cur_id != NULL)
        assert_int_equal(bm_keyring_add(kr, cur_id, cur, 1, err, sizeof err), BM_OK);
    if (prev_id != NULL)
        assert_int_equal(bm_keyring_add(kr, prev_id, prev, 0, err, sizeof err), BM_OK);
    return kr;
}

static int contains(const uint8_t *hay, size_t len, const void *needle, size_t n)
{
    for (size_t i = 0; n <= len && i <= len - n; i++)
        if (hay[i] == *(const uint8_t *)needle && memcmp(hay + i, needle, n) == 0)
            return 1;
    return 0;
}

/* Does 'hay' contain any 32-byte window (at 64-byte steps) of 'row', or
 * the subject id 'id'? */
static int leaks(const uint8_t *hay, size_t len, const uint8_t *row, const char *id)
{
    for (size_t off = 0; off + 32 <= 512; off += 64)
        if (contains(hay, len, row + off, 32))
            return 1;
    return contains(hay, len, id, strlen(id));
}

/* Read every stored segment of the gallery. For each: the value must be an
 * envelope under the key id its SegmentRef names (which must be in
 * 'allowed', a space-separated list), must not leak any of the first
 * 'nsubj' subjects, and, opened with 'kr', must decode into rows equal to
 * what intake stores. Counts the segments per key id in n_k1 / n_k2 and
 * marks seen[i] for every subject found. Returns -1 when a manifest or
 * segment is missing (a publication in flight), else 0. */
static int check_stored(struct gt *g, const struct bm_keyring *kr, int nsubj,
                        const char *allowed, int *n_k1, int *n_k2, int *seen)
{
    char err[512], key[BM_KEY_MAX], id[64];
    uint8_t row[512];
    float scale;
    *n_k1 = *n_k2 = 0;
    memset(seen, 0, (size_t)nsubj * sizeof *seen);
    for (uint32_t s = 0; s < SHARDS; s++) {
        struct bm_manifest *m = gt_manifest_get(g, s);
        if (m == NULL)
            return -1;
        for (size_t i = 0; i < m->nsegments; i++) {
            const struct bm_segref *ref = &m->segments[i];
            bm_key_segment(key, sizeof key, g->gallery, s, ref->id);
            void *val = NULL;
            size_t len = 0;
            if (bm_redis_get(g->redis, key, strlen(key), &val, &len) != BM_OK) {
                bm_manifest_free(m);
                return -1;
            }
            /* Sealed, under the key the manifest names. */
            assert_true(bm_atrest_is_sealed(val, len));
            char kid[BM_KEYRING_ID_MAX + 1];
            assert_int_equal(bm_atrest_key_id(val, len, kid, err, sizeof err), BM_OK);
            assert_string_equal(kid, ref->key_id);
            if (strstr(allowed, kid) == NULL)
                fail_msg("segment %llu under key '%s', allowed: %s",
                         (unsigned long long)ref->id, kid, allowed);
            *(strcmp(kid, "k1") == 0 ? n_k1 : n_k2) += 1;
            assert_int_equal(ref->bytes, len);
            for (int j = 0; j < nsubj; j++) {
                subject(id, sizeof id, j);
                gt_expected_row(g, (uint64_t)j, row, &scale);
                if (leaks(val, len, row, id))
                    fail_msg("segment %llu holds subject %d's template or id in plaintext",
                             (unsigned long long)ref->id, j);
            }
            /* Decrypt and compare with what intake stores. */
            const uint8_t *plain = NULL;
            size_t plainlen = 0;
            uint8_t *owned = NULL;
            int rc = bm_atrest_open(kr, g->gallery, s, ref->id, ref->key_id, val, len, &plain,
                                    &plainlen, &owned, err, sizeof err);
            if (rc != BM_OK)
                fail_msg("open segment %llu: %s", (unsigned long long)ref->id, err);
            struct bm_subjects *names = bm_subjects_new(0, err, sizeof err);
            struct bm_segment *seg = NULL;
            rc = bm_segblob_decode(plain, plainlen, &g->spec, ref->sha256, &seg, names, err,
                                   sizeof err);
            if (rc != BM_OK)
                fail_msg("decode segment %llu: %s", (unsigned long long)ref->id, err);
            for (size_t r = 0; r < bm_segment_count(seg); r++) {
                size_t idlen = 0;
                const char *sid = bm_subjects_get(names, bm_segment_row_id(seg, r), &idlen);
                assert_non_null(sid);
                /* Table ids are not NUL-terminated. */
                char sbuf[BM_SUBJECT_ID_MAX + 1];
                memcpy(sbuf, sid, idlen);
                sbuf[idlen] = '\0';
                int j = -1;
                assert_int_equal(sscanf(sbuf, "at-rest-subject-%d", &j), 1);
                assert_true(j >= 0 && j < nsubj);
                gt_expected_row(g, (uint64_t)j, row, &scale);
                assert_memory_equal(bm_segment_row(seg, r), row, 512);
                assert_true(fabsf(bm_segment_row_scale(seg, r) - scale) <= 1e-6f * scale);
                /* The search that found nothing above finds it here. */
                subject(id, sizeof id, j);
                assert_true(leaks(plain, plainlen, row, id));
                seen[j] = 1;
            }
            bm_segment_free(seg);
            bm_subjects_free(names);
            free(owned);
            free(val);
        }
        bm_manifest_free(m);
    }
    return 0;
}

/* Wait until check_stored sees all 'nsubj' subjects with at least
 * 'min_k2' segments under k2 and at most 'max_k1' under k1. */
static void wait_stored(struct gt *g, const struct bm_keyring *kr, int nsubj,
                        const char *allowed, int max_k1, int min_k2, int timeout_ms)
{
    int *seen = calloc((size_t)nsubj, sizeof *seen);
    assert_non_null(seen);
    int n1 = -1, n2 = -1, all = 0;
    long long end = bm_test_now_ms() + timeout_ms;
    while (bm_test_now_ms() < end) {
        if (check_stored(g, kr, nsubj, allowed, &n1, &n2, seen) == 0) {
            all = 1;
            for (int j = 0; j < nsubj; j++)
                all &= seen[j];
            if (all && n1 <= max_k1 && n2 >= min_k2) {
                free(seen);
                return;
            }
        }
        gt_sleep_ms(250);
    }
    free(seen);
    fail_msg("stored state: all subjects %d, k1 segments %d (max %d), k2 segments %d (min %d)",
             all, n1, max_k1, n2, min_k2);
}

/* Load every shard with 'kr' and check the subjects; returns the first
 * error code (and its message in err) or BM_OK. */
static int load_all(struct gt *g, const struct bm_keyring *kr, int nsubj, char *err,
                    size_t errlen)
{
    int rc = BM_OK;
    Biomatch__V1__GalleryDefinition *def = bm_galdef_get(g->redis, g->gallery, &rc, err, errlen);
    assert_non_null(def);
    size_t total = 0;
    struct bm_shard *sh[SHARDS] = {NULL};
    for (uint32_t s = 0; s < SHARDS && rc == BM_OK; s++) {
        sh[s] = bm_shard_load_keyring(g->redis, def, s, NULL, kr, &rc, err, errlen);
        if (sh[s] != NULL) {
            struct bm_shard_stats st;
            bm_shard_stats(sh[s], &st);
            total += st.subjects;
        }
    }
    if (rc == BM_OK) {
        assert_int_equal(total, (size_t)nsubj);
        for (int j = 0; j < nsubj; j++) {
            char id[64], back[BM_SUBJECT_ID_MAX + 1];
            subject(id, sizeof id, j);
            uint32_t s = bm_shard_of(id, strlen(id), SHARDS);
            assert_int_equal(bm_shard_subject_id(sh[s], bm_subjects_key(id, strlen(id)), back,
                                                 sizeof back),
                             (int)strlen(id));
            assert_string_equal(back, id);
        }
    }
    for (uint32_t s = 0; s < SHARDS; s++)
        bm_shard_free(sh[s]);
    bm_galdef_free(def);
    return rc;
}

/* Read the gallery's Kafka log to its end: every upsert value must be an
 * envelope (subjects below 'n_k1' under k1, the others under k2), leak
 * neither the template nor the subject id, and open with 'kr' -- bound to
 * its key and partition -- into a GalleryChange carrying that subject and
 * the row intake stores. Returns the number of records checked. */
static int check_log(struct gt *g, const struct bm_keyring *kr, int n_k1)
{
    char err[512], id[64];
    uint8_t row[512];
    float scale;
    struct bm_bus_conf c = gt_bus();
    struct bm_consumer *k = bm_consumer_new(&c, NULL, NULL, NULL, err, sizeof err);
    assert_non_null(k);
    int checked = 0;
    for (uint32_t s = 0; s < SHARDS; s++) {
        int64_t lo = 0, hi = 0;
        assert_int_equal(bm_consumer_watermarks(k, g->t_gallery, (int32_t)s, GT_WAIT_MS, &lo, &hi,
                                                err, sizeof err),
                         BM_OK);
        struct bm_bus_tp tp = {g->t_gallery, (int32_t)s, lo};
        assert_int_equal(bm_consumer_assign(k, &tp, 1, err, sizeof err), BM_OK);
        int64_t next = lo;
        long long end = bm_test_now_ms() + GT_WAIT_MS;
        while (next < hi && bm_test_now_ms() < end) {
            struct bm_bus_msg *m = NULL;
            if (bm_consumer_poll(k, 100, &m, err, sizeof err) != BM_OK)
                continue;
            next = m->offset + 1;
            assert_true(m->keylen > 0 && m->keylen < sizeof id);
            memcpy(id, m->key, m->keylen);
            id[m->keylen] = '\0';
            int j = -1;
            assert_int_equal(sscanf(id, "at-rest-subject-%d", &j), 1);
            assert_true(m->value != NULL);
            const uint8_t *val = m->value;
            assert_true(bm_atrest_is_sealed(val, m->valuelen));
            char kid[BM_KEYRING_ID_MAX + 1];
            assert_int_equal(bm_atrest_key_id(val, m->valuelen, kid, err, sizeof err), BM_OK);
            assert_string_equal(kid, j < n_k1 ? "k1" : "k2");
            gt_expected_row(g, (uint64_t)j, row, &scale);
            if (leaks(val, m->valuelen, row, id))
                fail_msg("gallery log record of subject %d holds its template or id in "
                         "plaintext", j);
            const uint8_t *plain = NULL;
            size_t plainlen = 0;
            uint8_t *owned = NULL;
            /* Bound to its place: not openable as another subject's. */
            assert_int_equal(bm_atrest_open_record(kr, g->gallery, s, "at-rest-subject-x", 17, val,
                                                   m->valuelen, &plain, &plainlen, &owned, err,
                                                   sizeof err),
                             BM_ECHECKSUM);
            int rc = bm_atrest_open_record(kr, g->gallery, s, id, m->keylen, val, m->valuelen,
                                           &plain, &plainlen, &owned, err, sizeof err);
            if (rc != BM_OK)
                fail_msg("open gallery log record: %s", err);
            Biomatch__V1__GalleryChange *ch =
                bm_wire_decode_gallery_change(plain, plainlen, 1 << 20, err, sizeof err);
            assert_non_null(ch);
            assert_string_equal(ch->subject_id, id);
            assert_non_null(ch->template_);
            assert_non_null(ch->template_->dense);
            assert_int_equal(ch->template_->dense->data.len, 512);
            assert_memory_equal(ch->template_->dense->data.data, row, 512);
            bm_wire_free_gallery_change(ch);
            free(owned);
            bm_bus_msg_free(m);
            checked++;
        }
        assert_int_equal(next, hi);
    }
    bm_consumer_free(k);
    return checked;
}

static void enroll_range(struct gt *g, int from, int to)
{
    char id[64];
    for (int i = from; i < to; i++) {
        subject(id, sizeof id, i);
        gt_enroll(g, g->gallery, id, BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT, (uint64_t)i, 0,
                  NULL);
    }
    gt_flush(g);
}

static void test_at_rest(void **state)
{
    (void)state;
    struct gt g;
    char err[512];
    gt_setup(&g, SHARDS, 1 << 20, 200);
    /* Keep gt_setup's config as the base of every rewrite. */
    FILE *f = fopen(g.config, "r");
    assert_non_null(f);
    base_len = fread(base_conf, 1, sizeof base_conf, f);
    fclose(f);
    assert_true(base_len > 0 && base_len < sizeof base_conf);
    snprintf(keydir, sizeof keydir, "/tmp/bm-at-rest.XXXXXX");
    assert_non_null(mkdtemp(keydir));
    snprintf(k1path, sizeof k1path, "%s/k1", keydir);
    snprintf(k2path, sizeof k2path, "%s/k2", keydir);
    write_key(k1path, K1, 1);
    write_key(k2path, K2, 0);

    /* 1 + 2: enroll under k1. */
    write_conf(&g, "k1", k1path, NULL);
    gt_start(&g);
    enroll_range(&g, 0, N1);
    gt_wait_total(&g, N1, GT_WAIT_MS * 2);
    struct bm_keyring *k1 = ring("k1", K1, NULL, NULL);
    wait_stored(&g, k1, N1, "k1", 1000, 0, GT_WAIT_MS);
    assert_int_equal(load_all(&g, k1, N1, err, sizeof err), BM_OK);

    /* 3: no keyring, or a keyring without k1. */
    assert_int_equal(load_all(&g, NULL, N1, err, sizeof err), BM_EUNSUPPORTED);
    assert_non_null(strstr(err, "'k1'"));
    struct bm_keyring *only2 = ring("k2", K2, NULL, NULL);
    assert_int_equal(load_all(&g, only2, N1, err, sizeof err), BM_EUNSUPPORTED);
    assert_non_null(strstr(err, "'k1'"));
    /* The right id with the wrong bytes fails authentication. */
    struct bm_keyring *fake1 = ring("k1", K2, NULL, NULL);
    assert_int_equal(load_all(&g, fake1, N1, err, sizeof err), BM_ECHECKSUM);

    /* 4: rotation. Stop the writer so the k1 state stays put, and check
     * that the rotated keyring (k2 current, k1 previous) opens it. */
    assert_int_equal(gt_stop(&g, SIGTERM), 0);
    struct bm_keyring *rotated = ring("k2", K2, "k1", K1);
    assert_int_equal(load_all(&g, rotated, N1, err, sizeof err), BM_OK);
    char prev[256];
    snprintf(prev, sizeof prev, "k1=%s", k1path);
    write_conf(&g, "k2", k2path, prev);
    gt_start(&g);
    /* Both shards get new subjects, so both get a k2 segment. */
    int per_shard[SHARDS] = {0};
    for (int i = N1; i < N1 + N2; i++) {
        char id[64];
        subject(id, sizeof id, i);
        per_shard[bm_shard_of(id, strlen(id), SHARDS)]++;
    }
    assert_true(per_shard[0] > 0 && per_shard[1] > 0);
    enroll_range(&g, N1, N1 + N2);
    gt_wait_total(&g, N1 + N2, GT_WAIT_MS * 2);
    /* New seals are under k2; whatever mix is stored loads with both. */
    wait_stored(&g, rotated, N1 + N2, "k1 k2", 1000, 1, GT_WAIT_MS);
    assert_int_equal(load_all(&g, rotated, N1 + N2, err, sizeof err), BM_OK);
    /* Both shards now have small segments and go quiet: compaction
     * rewrites them under the current key, so k1 disappears. */
    wait_stored(&g, rotated, N1 + N2, "k1 k2", 0, 1, GT_WAIT_MS * 2);
    assert_int_equal(load_all(&g, only2, N1 + N2, err, sizeof err), BM_OK);
    assert_int_equal(load_all(&g, k1, N1 + N2, err, sizeof err), BM_EUNSUPPORTED);
    assert_non_null(strstr(err, "'k2'"));
    assert_int_equal(gt_stop(&g, SIGTERM), 0);

    /* 5: the Kafka log. Records are not re-sealed on rotation: the k1
     * ones need k1 for as long as they are in the log. */
    assert_int_equal(check_log(&g, rotated, N1), N1 + N2);

    /* 6: only k2 configured, and shard 0 loses a segment. The owner
     * notices within about 2 s and reads the whole log to rebuild; the k1
     * records stop it. 8 s without a new manifest version (a rebuild
     * takes well under a second here); then with k1 back it rebuilds. */
    write_conf(&g, "k2", k2path, NULL);
    gt_start(&g);
    struct bm_manifest *m0 = gt_manifest_get(&g, 0);
    assert_non_null(m0);
    assert_true(m0->nsegments > 0);
    uint64_t v0 = m0->version;
    char seg[BM_KEY_MAX];
    bm_key_segment(seg, sizeof seg, g.gallery, 0, m0->segments[0].id);
    bm_manifest_free(m0);
    assert_int_equal(bm_redis_del(g.redis, seg, strlen(seg)), BM_OK);
    gt_sleep_ms(8000);
    m0 = gt_manifest_get(&g, 0);
    assert_non_null(m0);
    assert_int_equal(m0->version, v0);
    bm_manifest_free(m0);
    assert_int_equal(gt_stop(&g, SIGTERM), 0);
    write_conf(&g, "k2", k2path, prev);
    gt_start(&g);
    wait_stored(&g, rotated, N1 + N2, "k1 k2", 0, 1, GT_WAIT_MS * 2);
    m0 = gt_manifest_get(&g, 0);
    assert_true(m0->version > v0);
    bm_manifest_free(m0);
    assert_int_equal(load_all(&g, only2, N1 + N2, err, sizeof err), BM_OK);
    assert_int_equal(gt_stop(&g, SIGTERM), 0);

    bm_keyring_free(k1);
    bm_keyring_free(only2);
    bm_keyring_free(fake1);
    bm_keyring_free(rotated);
    unlink(k1path);
    unlink(k2path);
    rmdir(keydir);
    gt_teardown(&g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_at_rest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
