/* Unit tests of shard manifests and Redis key names (lib/store/manifest.h,
 * lib/store/keys.h): codec round trips and limits, version arithmetic, and
 * the diffs a worker's incremental loader applies; epochs (a rebuilt
 * shard replaces the held one whatever its version) and the manifest MAC
 * of strict at-rest mode. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "biomatch.pb-c.h"
#include "store/keys.h"
#include "crypto/keyring.h"
#include "store/manifest.h"
#include "store/manifest_mac.h"
#include "store/subjects.h"

static struct bm_segref ref(uint64_t id, uint32_t count, uint8_t fill)
{
    struct bm_segref r;
    memset(&r, 0, sizeof r);
    r.id = id;
    r.count = count;
    r.bytes = 192 + (uint64_t)count * 576;
    memset(r.sha256, fill, sizeof r.sha256);
    return r;
}

static struct bm_manifest *v1(void)
{
    char err[256];
    struct bm_manifest *m0 = bm_manifest_new("faces", 3, err, sizeof err);
    assert_non_null(m0);
    struct bm_segref add[2] = { ref(20, 100, 0xbb), ref(10, 50, 0xaa) };
    memcpy(add[1].key_id, "k1", 3);
    const char *tomb[] = { "bob", "alice", "bob" };
    struct bm_manifest_change c = { .add = add, .nadd = 2, .set_tombstones = 1,
                                    .tombstones = tomb, .ntombstones = 3,
                                    .log_offset = 150, .subjects = 148,
                                    .updated_unix_ms = 1700000000000 };
    struct bm_manifest *m = NULL;
    assert_int_equal(bm_manifest_next(m0, &c, &m, err, sizeof err), BM_OK);
    bm_manifest_free(m0);
    return m;
}

static void test_next(void **state)
{
    (void)state;
    struct bm_manifest *m = v1();
    assert_true(m->version == 1);
    assert_int_equal(m->nsegments, 2);
    assert_true(m->segments[0].id == 10 && m->segments[1].id == 20);   /* sorted */
    assert_string_equal(m->segments[0].key_id, "k1");
    assert_int_equal(m->ntombstones, 2);                               /* deduplicated */
    assert_string_equal(m->tombstones[0], "alice");
    assert_string_equal(m->tombstones[1], "bob");
    assert_non_null(bm_manifest_segment(m, 20));
    assert_null(bm_manifest_segment(m, 15));

    char err[256];
    struct bm_manifest *n = (struct bm_manifest *)(uintptr_t)1;
    uint64_t drop_missing = 99;
    struct bm_manifest_change c = { .drop = &drop_missing, .ndrop = 1, .log_offset = 150 };
    assert_int_equal(bm_manifest_next(m, &c, &n, err, sizeof err), BM_ENOTFOUND);
    assert_null(n);
    struct bm_segref dup = ref(10, 1, 0xcc);
    struct bm_manifest_change c2 = { .add = &dup, .nadd = 1, .log_offset = 150 };
    assert_int_equal(bm_manifest_next(m, &c2, &n, err, sizeof err), BM_ECONFLICT);
    struct bm_segref twice[2] = { ref(30, 1, 1), ref(30, 2, 2) };
    struct bm_manifest_change c3 = { .add = twice, .nadd = 2, .log_offset = 150 };
    assert_int_equal(bm_manifest_next(m, &c3, &n, err, sizeof err), BM_ECONFLICT);
    struct bm_manifest_change c4 = { .log_offset = 149 };
    assert_int_equal(bm_manifest_next(m, &c4, &n, err, sizeof err), BM_EINVAL);
    const char *bad[] = { "" };
    struct bm_manifest_change c5 = { .set_tombstones = 1, .tombstones = bad, .ntombstones = 1,
                                     .log_offset = 150 };
    assert_int_equal(bm_manifest_next(m, &c5, &n, err, sizeof err), BM_EINVAL);

    /* Compaction: drop 10 and 20, add 30, clear tombstones. */
    uint64_t drop[2] = { 10, 20 };
    struct bm_segref merged = ref(30, 146, 0xdd);
    struct bm_manifest_change c6 = { .add = &merged, .nadd = 1, .drop = drop, .ndrop = 2,
                                     .set_tombstones = 1, .log_offset = 150,
                                     .subjects = 146 };
    assert_int_equal(bm_manifest_next(m, &c6, &n, err, sizeof err), BM_OK);
    assert_true(n->version == 2);
    assert_int_equal(n->nsegments, 1);
    assert_int_equal(n->ntombstones, 0);
    assert_int_equal(n->subjects, 146);
    /* m is unchanged. */
    assert_int_equal(m->nsegments, 2);
    assert_int_equal(m->ntombstones, 2);
    bm_manifest_free(n);

    /* Re-sealing a segment under its own id is a replacement. */
    struct bm_segref resealed = ref(20, 100, 0xee);
    uint64_t d20 = 20;
    struct bm_manifest_change c7 = { .add = &resealed, .nadd = 1, .drop = &d20, .ndrop = 1,
                                     .log_offset = 160 };
    assert_int_equal(bm_manifest_next(m, &c7, &n, err, sizeof err), BM_OK);
    assert_int_equal(n->nsegments, 2);
    assert_int_equal(n->segments[1].sha256[0], 0xee);
    assert_int_equal(n->ntombstones, 2);   /* kept */
    bm_manifest_free(n);
    bm_manifest_free(m);
    bm_manifest_free(NULL);
}

static void test_codec(void **state)
{
    (void)state;
    char err[256];
    struct bm_manifest *m = v1();
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(bm_manifest_encode(m, &buf, &len, err, sizeof err), BM_OK);
    struct bm_manifest *back = NULL;
    assert_int_equal(bm_manifest_decode(buf, len, 0, &back, err, sizeof err), BM_OK);
    assert_string_equal(back->gallery, "faces");
    assert_int_equal(back->shard, 3);
    assert_true(back->version == 1);
    assert_true(back->log_offset == 150);
    assert_int_equal(back->subjects, 148);
    assert_true(back->updated_unix_ms == 1700000000000);
    assert_int_equal(back->nsegments, 2);
    assert_memory_equal(back->segments, m->segments, 2 * sizeof *m->segments);
    assert_int_equal(back->ntombstones, 2);
    assert_string_equal(back->tombstones[1], "bob");
    /* Canonical: re-encoding gives the same bytes. */
    uint8_t *buf2 = NULL;
    size_t len2 = 0;
    assert_int_equal(bm_manifest_encode(back, &buf2, &len2, err, sizeof err), BM_OK);
    assert_int_equal(len2, len);
    assert_memory_equal(buf2, buf, len);
    free(buf2);
    bm_manifest_free(back);

    /* The size limit is checked before parsing. */
    back = (struct bm_manifest *)(uintptr_t)1;
    assert_int_equal(bm_manifest_decode(buf, len, len - 1, &back, err, sizeof err), BM_ERANGE);
    assert_null(back);
    /* Truncations never crash and never succeed with garbage names. */
    for (size_t n = 0; n < len; n++) {
        uint8_t *cut = malloc(n ? n : 1);
        memcpy(cut, buf, n);
        int rc = bm_manifest_decode(cut, n, 0, &back, err, sizeof err);
        if (rc == BM_OK)
            bm_manifest_free(back);
        else
            assert_true(rc == BM_EPROTO);
        free(cut);
    }
    const uint8_t junk[] = { 0xff, 0xff, 0xff, 0xff };
    assert_int_equal(bm_manifest_decode(junk, sizeof junk, 0, &back, err, sizeof err), BM_EPROTO);
    free(buf);

    /* Digest of the wrong size, duplicate ids and a bad gallery name. */
    Biomatch__V1__ShardManifest pb = BIOMATCH__V1__SHARD_MANIFEST__INIT;
    Biomatch__V1__SegmentRef r1 = BIOMATCH__V1__SEGMENT_REF__INIT;
    Biomatch__V1__SegmentRef r2 = BIOMATCH__V1__SEGMENT_REF__INIT;
    Biomatch__V1__SegmentRef *rs[2] = { &r1, &r2 };
    uint8_t sha[32] = { 0 };
    r1.id = 1;
    r1.sha256.data = sha;
    r1.sha256.len = 31;
    r2.id = 1;
    r2.sha256.data = sha;
    r2.sha256.len = 32;
    pb.gallery = (char *)"faces";
    pb.n_segments = 1;
    pb.segments = rs;
    uint8_t out[256];
    len = biomatch__v1__shard_manifest__pack(&pb, out);
    assert_int_equal(bm_manifest_decode(out, len, 0, &back, err, sizeof err), BM_EPROTO);
    r1.sha256.len = 32;
    pb.n_segments = 2;
    len = biomatch__v1__shard_manifest__pack(&pb, out);
    assert_int_equal(bm_manifest_decode(out, len, 0, &back, err, sizeof err), BM_EPROTO);
    pb.n_segments = 1;
    len = biomatch__v1__shard_manifest__pack(&pb, out);
    assert_int_equal(bm_manifest_decode(out, len, 0, &back, err, sizeof err), BM_OK);
    bm_manifest_free(back);
    pb.gallery = (char *)"fa{ces}";
    len = biomatch__v1__shard_manifest__pack(&pb, out);
    assert_int_equal(bm_manifest_decode(out, len, 0, &back, err, sizeof err), BM_EPROTO);
    pb.gallery = (char *)"";
    len = biomatch__v1__shard_manifest__pack(&pb, out);
    assert_int_equal(bm_manifest_decode(out, len, 0, &back, err, sizeof err), BM_EPROTO);
    bm_manifest_free(m);
}

static int has_id(const uint64_t *ids, size_t n, uint64_t id)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] == id)
            return 1;
    return 0;
}

static void test_diff(void **state)
{
    (void)state;
    char err[256];
    struct bm_manifest *a = v1();           /* segs 10, 20; tombs alice, bob */
    struct bm_manifest_diff d;

    /* From nothing: load everything. */
    assert_int_equal(bm_manifest_diff(NULL, a, &d, err, sizeof err), BM_OK);
    assert_int_equal(d.nadded, 2);
    assert_int_equal(d.nremoved, 0);
    assert_int_equal(d.nnew_tombstones, 2);
    bm_manifest_diff_free(&d);

    /* Same version: nothing to do. */
    assert_int_equal(bm_manifest_diff(a, a, &d, err, sizeof err), BM_OK);
    assert_int_equal(d.nadded + d.nremoved + d.nnew_tombstones + d.ngone_tombstones, 0);
    bm_manifest_diff_free(&d);

    /* Drop 10, re-seal 20 with new content, add 40 and 30, tombstones
     * {bob, carol}. */
    uint64_t drop[2] = { 10, 20 };
    struct bm_segref add[3] = { ref(40, 5, 4), ref(20, 100, 0x99), ref(30, 7, 3) };
    const char *tomb[] = { "carol", "bob" };
    struct bm_manifest_change c = { .add = add, .nadd = 3, .drop = drop, .ndrop = 2,
                                    .set_tombstones = 1, .tombstones = tomb,
                                    .ntombstones = 2, .log_offset = 200 };
    struct bm_manifest *b = NULL;
    assert_int_equal(bm_manifest_next(a, &c, &b, err, sizeof err), BM_OK);
    assert_int_equal(bm_manifest_diff(a, b, &d, err, sizeof err), BM_OK);
    assert_int_equal(d.nadded, 3);
    assert_true(d.added[0]->id == 20 && d.added[1]->id == 30 && d.added[2]->id == 40);
    assert_int_equal(d.added[0]->sha256[0], 0x99);
    assert_int_equal(d.nremoved, 2);
    assert_true(has_id(d.removed, d.nremoved, 10) && has_id(d.removed, d.nremoved, 20));
    assert_int_equal(d.nnew_tombstones, 1);
    assert_string_equal(d.new_tombstones[0], "carol");
    assert_int_equal(d.ngone_tombstones, 1);
    assert_string_equal(d.gone_tombstones[0], "alice");
    bm_manifest_diff_free(&d);

    /* Backwards, or across shards: refused. */
    assert_int_equal(bm_manifest_diff(b, a, &d, err, sizeof err), BM_EINVAL);
    assert_null(d.added);
    struct bm_manifest *other = bm_manifest_new("faces", 4, err, sizeof err);
    assert_int_equal(bm_manifest_diff(other, b, &d, err, sizeof err), BM_EINVAL);
    bm_manifest_free(other);
    bm_manifest_diff_free(NULL);

    /* Tombstone keys for the matcher. */
    uint64_t *keys = NULL;
    assert_int_equal(bm_manifest_tombstone_keys(b, &keys, err, sizeof err), BM_OK);
    assert_true(keys[0] == bm_subjects_key("bob", 3));
    assert_true(keys[1] == bm_subjects_key("carol", 5));
    free(keys);

    struct bm_manifest *copy = bm_manifest_dup(b, err, sizeof err);
    assert_non_null(copy);
    assert_int_equal(bm_manifest_diff(b, copy, &d, err, sizeof err), BM_OK);
    assert_int_equal(d.nadded + d.nremoved + d.nnew_tombstones + d.ngone_tombstones, 0);
    bm_manifest_diff_free(&d);
    bm_manifest_free(copy);
    bm_manifest_free(b);
    bm_manifest_free(a);
}

static void test_keys(void **state)
{
    (void)state;
    char k[BM_KEY_MAX];
    assert_int_equal(bm_key_manifest(k, sizeof k, "faces", 3), BM_OK);
    assert_string_equal(k, "bm:{faces:3}:manifest");
    assert_int_equal(bm_key_segment(k, sizeof k, "faces", 3, 18446744073709551615ull), BM_OK);
    assert_string_equal(k, "bm:{faces:3}:seg:18446744073709551615");
    assert_int_equal(bm_key_gallery(k, sizeof k, "eu.border-iris_2"), BM_OK);
    assert_string_equal(k, "bm:gallery:eu.border-iris_2");
    assert_int_equal(bm_key_node(k, sizeof k, "worker-7:abc"), BM_OK);
    assert_string_equal(k, "bm:node:worker-7:abc");

    assert_int_equal(bm_key_manifest(k, sizeof k, "a{b", 0), BM_EINVAL);
    assert_string_equal(k, "");
    assert_int_equal(bm_key_manifest(k, sizeof k, "a:b", 0), BM_EINVAL);
    assert_int_equal(bm_key_manifest(k, sizeof k, "", 0), BM_EINVAL);
    assert_int_equal(bm_key_gallery(k, sizeof k, "has space"), BM_EINVAL);
    assert_int_equal(bm_key_node(k, sizeof k, "n\n"), BM_EINVAL);
    char longname[BM_GALLERY_NAME_MAX + 2];
    memset(longname, 'g', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    assert_int_equal(bm_key_gallery(k, sizeof k, longname), BM_EINVAL);
    longname[BM_GALLERY_NAME_MAX] = '\0';
    assert_int_equal(bm_key_segment(k, sizeof k, longname, UINT32_MAX, UINT64_MAX), BM_OK);
    char small[10];
    assert_int_equal(bm_key_manifest(small, sizeof small, "faces", 3), BM_ERANGE);
    assert_string_equal(small, "");
}

/* An epoch is drawn by bm_manifest_new, kept by bm_manifest_next and
 * survives the codec; a diff across epochs replaces everything even when
 * the new history's version is lower (the FLUSHALL story). */
static void test_epoch(void **state)
{
    (void)state;
    char err[256];
    struct bm_manifest *a = v1();
    struct bm_manifest *b = v1();
    assert_false(bm_manifest_same_epoch(a, b)); /* two histories */
    uint8_t *enc = NULL;
    size_t len = 0;
    assert_int_equal(bm_manifest_encode(a, &enc, &len, err, sizeof err), BM_OK);
    struct bm_manifest *a2 = NULL;
    assert_int_equal(bm_manifest_decode(enc, len, 0, &a2, err, sizeof err), BM_OK);
    free(enc);
    assert_true(bm_manifest_same_epoch(a, a2));
    /* 'a' moves on to version 3 in its own epoch. */
    struct bm_manifest_change c = {0};
    c.log_offset = a->log_offset;
    struct bm_manifest *a3 = NULL, *tmp = NULL;
    assert_int_equal(bm_manifest_next(a, &c, &tmp, err, sizeof err), BM_OK);
    assert_int_equal(bm_manifest_next(tmp, &c, &a3, err, sizeof err), BM_OK);
    bm_manifest_free(tmp);
    assert_true(bm_manifest_same_epoch(a, a3));
    assert_true(a3->version > b->version);
    /* Same epoch: an older version is refused. Another epoch: b replaces
     * a3 whole although its version is lower. */
    struct bm_manifest_diff d;
    assert_int_equal(bm_manifest_diff(a3, a2, &d, err, sizeof err), BM_EINVAL);
    assert_int_equal(bm_manifest_diff(a3, b, &d, err, sizeof err), BM_OK);
    assert_int_equal(d.nremoved, a3->nsegments);
    assert_int_equal(d.nadded, b->nsegments);
    bm_manifest_diff_free(&d);
    bm_manifest_free(a);
    bm_manifest_free(a2);
    bm_manifest_free(a3);
    bm_manifest_free(b);
}

static struct bm_keyring *ring(const char *id, uint8_t fill)
{
    uint8_t key[32];
    memset(key, fill, sizeof key);
    struct bm_keyring *kr = bm_keyring_new();
    assert_non_null(kr);
    char err[128];
    assert_int_equal(bm_keyring_add(kr, id, key, 1, err, sizeof err), BM_OK);
    return kr;
}

/* Strict mode: a signed manifest verifies after a codec round trip; a
 * changed field of any kind, an unsigned manifest, and a manifest signed
 * under another key's bytes are refused; outside strict mode unsigned
 * manifests pass. */
static void test_mac(void **state)
{
    (void)state;
    char err[256];
    struct bm_keyring *kr = ring("k1", 0x11), *other = ring("k1", 0x22);
    assert_true(bm_keyring_strict(kr));
    struct bm_manifest *m = v1();
    assert_int_equal(bm_manifest_verify(m, kr, err, sizeof err), BM_ECHECKSUM); /* unsigned */
    assert_int_equal(bm_manifest_verify(m, NULL, err, sizeof err), BM_OK);
    assert_int_equal(bm_manifest_sign(m, kr, err, sizeof err), BM_OK);
    assert_true(m->has_mac);
    assert_string_equal(m->mac_key_id, "k1");
    uint8_t *enc = NULL;
    size_t len = 0;
    assert_int_equal(bm_manifest_encode(m, &enc, &len, err, sizeof err), BM_OK);
    struct bm_manifest *d = NULL;
    assert_int_equal(bm_manifest_decode(enc, len, 0, &d, err, sizeof err), BM_OK);
    free(enc);
    assert_int_equal(bm_manifest_verify(d, kr, err, sizeof err), BM_OK);
    assert_int_equal(bm_manifest_verify(d, other, err, sizeof err), BM_ECHECKSUM);
    /* Every covered field matters. */
    for (int field = 0; field < 6; field++) {
        struct bm_manifest *x = bm_manifest_dup(d, err, sizeof err);
        assert_non_null(x);
        switch (field) {
        case 0: x->version++; break;
        case 1: x->epoch[3] ^= 1; break;
        case 2: x->segments[0].sha256[0] ^= 1; break;
        case 3: x->segments[1].count++; break;
        case 4: x->log_offset++; break;
        default: x->shard++; break;
        }
        assert_int_equal(bm_manifest_verify(x, kr, err, sizeof err), BM_ECHECKSUM);
        bm_manifest_free(x);
    }
    /* bm_manifest_next drops the MAC: the new content must be signed. */
    struct bm_manifest_change c = {0};
    c.log_offset = d->log_offset;
    struct bm_manifest *n = NULL;
    assert_int_equal(bm_manifest_next(d, &c, &n, err, sizeof err), BM_OK);
    assert_false(n->has_mac);
    bm_keyring_set_allow_plaintext(kr, 1);
    assert_false(bm_keyring_strict(kr));
    assert_int_equal(bm_manifest_verify(n, kr, err, sizeof err), BM_OK);
    bm_manifest_free(n);
    bm_manifest_free(d);
    bm_manifest_free(m);
    bm_keyring_free(kr);
    bm_keyring_free(other);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_next),
        cmocka_unit_test(test_codec),
        cmocka_unit_test(test_diff),
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_epoch),
        cmocka_unit_test(test_mac),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
