/* Strict at-rest mode (docs/storage.md §8.2) through a real
 * biomatch-coordinator (gallery role) configured with an at-rest key, and
 * the workers' own shard loader:
 *
 *  1. every manifest the builder publishes carries a MAC that verifies
 *     under the key;
 *  2. a forged manifest written straight into Redis (a subject hidden by
 *     a tombstone, the old MAC kept) is refused by the loader
 *     (BM_ECHECKSUM) and by the builder, which rebuilds the shard from the
 *     log under a new epoch: the hidden subject is back, the MAC verifies;
 *  3. a plaintext segment blob written straight into Redis, even behind a
 *     correctly signed manifest, is refused by the loader (BM_ECHECKSUM)
 *     and by the builder, which rebuilds the shard sealed again;
 *  4. a plaintext gallery record produced straight to gallery.<name> (a
 *     valid change, only not sealed) is skipped by the builder.
 * Labels: integration, security. */
#include "test_gallery_util.h"

#include <fcntl.h>

#include "crypto/atrest.h"
#include "crypto/keyring.h"
#include "logread.h"
#include "store/loader.h"
#include "store/manifest_mac.h"

#define WAIT_MS 60000
#define N 6

static const uint8_t K1[32] = {7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                               16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31};
static char keypath[300];

static void put_manifest(struct gt *g, const struct bm_manifest *m)
{
    char err[256], key[BM_KEY_MAX];
    uint8_t *enc = NULL;
    size_t len = 0;
    assert_int_equal(bm_manifest_encode(m, &enc, &len, err, sizeof err), BM_OK);
    bm_key_manifest(key, sizeof key, g->gallery, 0);
    assert_int_equal(bm_redis_set(g->redis, key, strlen(key), enc, len, 0), BM_OK);
    free(enc);
}

/* The first record of the gallery log (partition 0): its key and value. */
struct first_record {
    char key[BM_SUBJECT_ID_MAX + 1];
    uint8_t *value;
    size_t len;
};

static int first_cb(int64_t offset, const void *key, size_t keylen, const void *value,
                    size_t valuelen, void *opaque)
{
    (void)offset;
    struct first_record *fr = opaque;
    if (fr->value != NULL || value == NULL || keylen > BM_SUBJECT_ID_MAX)
        return BM_OK;
    memcpy(fr->key, key, keylen);
    fr->key[keylen] = '\0';
    fr->value = malloc(valuelen);
    assert_non_null(fr->value);
    memcpy(fr->value, value, valuelen);
    fr->len = valuelen;
    return BM_OK;
}

static int read_first_record(struct gt *g, struct first_record *fr)
{
    char err[256];
    struct bm_bus_conf bc = gt_bus();
    int rc = bm_logread(&bc, g->t_gallery, 0, 0, WAIT_MS, first_cb, fr, NULL, err, sizeof err);
    return rc == BM_OK && fr->value != NULL ? BM_OK : BM_ENOTFOUND;
}

/* The loader, as a worker runs it, with the strict keyring: its result. */
static int load(struct gt *g, const struct bm_keyring *kr, char *err, size_t errlen)
{
    Biomatch__V1__GalleryDefinition *def =
        bm_galdef_from_spec(g->gallery, BIOMATCH__V1__MODALITY__MODALITY_FACE, &g->spec, 1, 1,
                            err, errlen);
    assert_non_null(def);
    int rc = BM_OK;
    struct bm_shard *s = bm_shard_load_keyring(g->redis, def, 0, NULL, kr, &rc, err, errlen);
    bm_shard_free(s);
    bm_galdef_free(def);
    return rc;
}

/* 1 when the shard, loaded as a worker loads it, holds subject 'id'; 0
 * when not; -1 when it does not load. */
static int has_subject(struct gt *g, const struct bm_keyring *kr, const char *id)
{
    char err[256], buf[BM_SUBJECT_ID_MAX + 1];
    Biomatch__V1__GalleryDefinition *def =
        bm_galdef_from_spec(g->gallery, BIOMATCH__V1__MODALITY__MODALITY_FACE, &g->spec, 1, 1,
                            err, sizeof err);
    assert_non_null(def);
    int rc = BM_OK;
    struct bm_shard *s = bm_shard_load_keyring(g->redis, def, 0, NULL, kr, &rc, err, sizeof err);
    bm_galdef_free(def);
    if (s == NULL)
        return -1;
    int n = bm_shard_subject_id(s, bm_subjects_key(id, strlen(id)), buf, sizeof buf);
    bm_shard_free(s);
    return n > 0 && strcmp(buf, id) == 0;
}

/* Wait until the stored manifest is signed, verifies, holds 'subjects'
 * live subjects, has no tombstones and every segment names k1; 'not_epoch'
 * (may be NULL) must differ from its epoch. Returns it. */
static struct bm_manifest *await_good(struct gt *g, const struct bm_keyring *kr,
                                      uint32_t subjects, const uint8_t *not_epoch)
{
    char err[256];
    int64_t end = bm_test_now_ms() + WAIT_MS;
    while (bm_test_now_ms() < end) {
        struct bm_manifest *m = gt_manifest_get(g, 0);
        int ok = m != NULL && m->has_mac && bm_manifest_verify(m, kr, err, sizeof err) == BM_OK &&
                 m->subjects == subjects && m->ntombstones == 0 &&
                 (not_epoch == NULL || memcmp(m->epoch, not_epoch, sizeof m->epoch) != 0);
        for (size_t s = 0; ok && s < m->nsegments; s++)
            ok = strcmp(m->segments[s].key_id, "k1") == 0;
        if (ok && load(g, kr, err, sizeof err) == BM_OK)
            return m;
        bm_manifest_free(m);
        gt_sleep_ms(200);
    }
    fail_msg("no good manifest within %d ms", WAIT_MS);
    return NULL;
}

static void test_strict_refusals(void **state)
{
    (void)state;
    char err[512], id[64];
    struct gt g;
    gt_setup(&g, 1, 1 << 20, 100);
    snprintf(keypath, sizeof keypath, "%s.k1", g.config);
    int fd = open(keypath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, K1, 32), 32);
    close(fd);
    FILE *f = fopen(g.config, "a");
    assert_non_null(f);
    fprintf(f, "security:\n  at_rest_key_file: \"%s\"\n  at_rest_key_id: k1\n", keypath);
    fclose(f);
    struct bm_keyring *kr = bm_keyring_new();
    assert_int_equal(bm_keyring_add(kr, "k1", K1, 1, err, sizeof err), BM_OK);
    assert_true(bm_keyring_strict(kr));

    gt_start(&g);
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "strict-%d", i);
        gt_enroll(&g, g.gallery, id, BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT, (uint64_t)i,
                  0, NULL);
    }
    gt_flush(&g);
    /* 1: signed manifests. */
    struct bm_manifest *good = await_good(&g, kr, N, NULL);

    /* 2: a forged manifest hides strict-1 behind a tombstone and keeps the
     * old MAC. The builder is stopped first, so the loader sees it. */
    assert_int_equal(gt_stop(&g, SIGTERM), 0);
    struct bm_manifest *forged = bm_manifest_dup(good, err, sizeof err);
    assert_non_null(forged);
    const char *hide[] = {"strict-1"};
    struct bm_manifest_change ch = {0};
    ch.set_tombstones = 1;
    ch.tombstones = hide;
    ch.ntombstones = 1;
    ch.log_offset = forged->log_offset;
    ch.subjects = N - 1;
    struct bm_manifest *next = NULL;
    assert_int_equal(bm_manifest_next(forged, &ch, &next, err, sizeof err), BM_OK);
    memcpy(next->mac, good->mac, sizeof next->mac);
    memcpy(next->mac_key_id, "k1", 3);
    next->has_mac = 1;
    put_manifest(&g, next);
    assert_int_equal(load(&g, kr, err, sizeof err), BM_ECHECKSUM);
    printf("loader refused the forged manifest: %s\n", err);
    /* Unsigned (as anyone without the key would write it): refused too. */
    next->has_mac = 0;
    next->mac_key_id[0] = '\0';
    put_manifest(&g, next);
    assert_int_equal(load(&g, kr, err, sizeof err), BM_ECHECKSUM);
    gt_start(&g);
    struct bm_manifest *repaired = await_good(&g, kr, N, next->epoch);
    assert_true(repaired->version > next->version);
    bm_manifest_free(forged);
    bm_manifest_free(next);

    /* 3: a plaintext blob behind a manifest signed with the key (as a
     * coordinator allowed plaintext would write it). */
    assert_int_equal(gt_stop(&g, SIGTERM), 0);
    const struct bm_segref *ref = &repaired->segments[0];
    char skey[BM_KEY_MAX];
    bm_key_segment(skey, sizeof skey, g.gallery, 0, ref->id);
    void *val = NULL;
    size_t len = 0;
    assert_int_equal(bm_redis_get(g.redis, skey, strlen(skey), &val, &len), BM_OK);
    const uint8_t *plain = NULL;
    size_t plainlen = 0;
    uint8_t *owned = NULL;
    assert_int_equal(bm_atrest_open(kr, g.gallery, 0, ref->id, "k1", val, len, &plain,
                                    &plainlen, &owned, err, sizeof err),
                     BM_OK);
    assert_int_equal(bm_redis_set(g.redis, skey, strlen(skey), plain, plainlen, 0), BM_OK);
    free(owned);
    free(val);
    struct bm_manifest *pm = bm_manifest_dup(repaired, err, sizeof err);
    assert_non_null(pm);
    pm->segments[0].key_id[0] = '\0';
    pm->segments[0].bytes = plainlen;
    assert_int_equal(bm_manifest_sign(pm, kr, err, sizeof err), BM_OK);
    put_manifest(&g, pm);
    assert_int_equal(load(&g, kr, err, sizeof err), BM_ECHECKSUM);
    printf("loader refused the plaintext segment: %s\n", err);
    gt_start(&g);
    struct bm_manifest *resealed = await_good(&g, kr, N, pm->epoch);
    bm_manifest_free(pm);
    bm_manifest_free(resealed);

    /* 4: a plaintext gallery record produced straight to the log (a valid
     * change, only not sealed) is skipped; a sealed enrollment after it
     * is taken, so the plaintext one was read and refused. */
    struct first_record fr = {0};
    assert_int_equal(read_first_record(&g, &fr), BM_OK);
    const uint8_t *plainrec = NULL;
    size_t plainreclen = 0;
    owned = NULL;
    assert_int_equal(bm_atrest_open_record(kr, g.gallery, 0, fr.key, strlen(fr.key), fr.value,
                                           fr.len, &plainrec, &plainreclen, &owned, err,
                                           sizeof err),
                     BM_OK);
    Biomatch__V1__GalleryChange *ch2 = bm_wire_decode_gallery_change(
        plainrec, plainreclen, BM_WIRE_DEFAULT_MAX_BYTES, err, sizeof err);
    assert_non_null(ch2);
    free(owned);
    free(fr.value);
    ch2->subject_id = (char *)"strict-plain";
    size_t clen = 0;
    uint8_t *cbuf = bm_wire_encode(&ch2->base, &clen);
    assert_non_null(cbuf);
    ch2->subject_id = NULL; /* borrowed literal: not the decoder's to free */
    bm_wire_free_gallery_change(ch2);
    int delivered = 0;
    assert_int_equal(bm_producer_send(g.producer, g.t_gallery, 0, "strict-plain", 12, cbuf,
                                      clen, NULL, 0, gt_delivery, &delivered),
                     BM_OK);
    assert_int_equal(bm_producer_flush(g.producer, WAIT_MS), BM_OK);
    free(cbuf);
    gt_enroll(&g, g.gallery, "strict-after", BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT, 99, 0,
              NULL);
    gt_flush(&g);
    int64_t end = bm_test_now_ms() + WAIT_MS;
    while (has_subject(&g, kr, "strict-after") != 1) {
        if (bm_test_now_ms() > end)
            fail_msg("strict-after not sealed within %d ms", WAIT_MS);
        gt_sleep_ms(200);
    }
    assert_int_equal(has_subject(&g, kr, "strict-plain"), 0);
    struct bm_manifest *after = await_good(&g, kr, N + 1, NULL);
    printf("plaintext gallery record skipped: %u subjects\n", after->subjects);
    bm_manifest_free(after);
    bm_manifest_free(repaired);
    bm_manifest_free(good);
    bm_keyring_free(kr);
    gt_teardown(&g);
    unlink(keypath);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strict_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
