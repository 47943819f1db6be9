/* One record of a gallery log into a change buffer: key checks, the
 * at-rest envelope, decoding, storage form and the subject key collision
 * rule (shard.h, bm_gshard_add). */
#define _POSIX_C_SOURCE 200809L
#include "shard_int.h"

#include <stdlib.h>
#include <string.h>
#include "common/clock.h"
#include "crypto/atrest.h"
#include "gallery.h"
#include "keymap.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "store/subjects.h"

static int buffer_keyed(struct bm_gshard *sh, struct sbuf *b, int64_t offset, uint64_t k,
                        const char *key, size_t keylen, const void *value, size_t valuelen);

/* Parse one log record into buffer 'b'. */
int gs_buffer_record(struct bm_gshard *sh, struct sbuf *b, int64_t offset,
                     const void *key, size_t keylen, const void *value, size_t valuelen)
{
    if (key == NULL || keylen < 1 || keylen > BM_SUBJECT_ID_MAX) {
        bm_counter_inc(sh->c_skipped);
        BM_LOGF(BM_LOG_WARN, "gallery record without a valid key skipped",
                BM_LF_STR("gallery", sh->gallery), BM_LF_INT("shard", sh->shard),
                BM_LF_INT("offset", offset));
        return BM_OK;
    }
    return buffer_keyed(sh, b, offset, bm_subjects_key(key, keylen), key, keylen, value,
                        valuelen);
}

/* 1 when subject 'id' may not take 'key' because another subject holds
 * it (an FNV-1a collision): a buffered upsert or delete of another id, or
 * (for the shard's own buffer, whose base is the index) another id's live
 * sealed row. An upsert may take over a key whose buffered change is
 * another id's delete: that subject is gone by then. */
static int collides(const struct bm_gshard *sh, const struct sbuf *b, uint64_t k,
                    const char *id, size_t len, int del)
{
    uint64_t slot;
    if (bm_keymap_get(b->idx, k, &slot)) {
        const struct bent *e = &b->e[slot];
        if (e->idlen == len && memcmp(e->id, id, len) == 0)
            return 0;
        return del || !e->del;
    }
    size_t have = 0;
    const char *cur = b == &sh->buf && bm_keymap_get(sh->index, k, NULL)
                          ? gs_name_get(sh, k, &have)
                          : NULL;
    return cur != NULL && (have != len || memcmp(cur, id, len) != 0);
}

/* buffer_record with the key given (tests forge it, see
 * bm_gshard_add_keyed). */
static int buffer_keyed(struct bm_gshard *sh, struct sbuf *b, int64_t offset, uint64_t k,
                        const char *key, size_t keylen, const void *value, size_t valuelen)
{
    char err[256];
    uint64_t slot;
    int have = bm_keymap_get(b->idx, k, &slot);
    if (have && b->e[slot].offset >= offset)
        return BM_OK; /* read twice (resync and group consumer): keep the newer */
    int del = value == NULL;
    if (collides(sh, b, k, key, keylen, del)) {
        /* Refused: applying it would replace or delete another subject.
         * The id stays out of the record (info-level logs carry no
         * subject ids); the offset finds it in the log. */
        bm_counter_inc(sh->c_collisions);
        BM_LOGF(BM_LOG_WARN, "gallery record skipped: subject key collision",
                BM_LF_STR("gallery", sh->gallery), BM_LF_INT("shard", sh->shard),
                BM_LF_INT("offset", offset));
        return BM_OK;
    }
    float scale = 1.0f;
    if (!del) {
        /* Sealed by intake when an at-rest key is configured. */
        const uint8_t *plain = NULL;
        size_t plainlen = 0;
        uint8_t *owned = NULL;
        if (bm_atrest_plaintext_refused(sh->env.keyring, value, valuelen))
            bm_counter_inc(sh->c_refused_record); /* refused by the open below */
        int orc = bm_atrest_open_record(sh->env.keyring, sh->gallery, sh->shard, key, keylen,
                                        value, valuelen, &plain, &plainlen, &owned, err,
                                        sizeof err);
        if (orc == BM_EUNSUPPORTED || orc == BM_ENOMEM) {
            /* A key this process lacks: skipping would build shards
             * without these subjects. Fail loudly until it is configured. */
            BM_LOGF(BM_LOG_ERROR, "gallery record cannot be opened",
                    BM_LF_STR("gallery", sh->gallery), BM_LF_INT("shard", sh->shard),
                    BM_LF_INT("offset", offset), BM_LF_STR("error", err));
            return orc;
        }
        Biomatch__V1__GalleryChange *ch = NULL;
        if (orc == BM_OK)
            ch = bm_wire_decode_gallery_change(plain, plainlen, BM_WIRE_DEFAULT_MAX_BYTES, err,
                                               sizeof err);
        free(owned);
        if (ch != NULL && bm_gallery_stored_check(&sh->spec, ch->template_, err, sizeof err) ==
                              BM_OK) {
            scale = bm_gallery_template_row(&sh->spec, ch->template_, sh->row);
        } else {
            /* Undecodable, not in storage form, or sealed for another
             * place (altered or moved): reading it again cannot help. */
            bm_wire_free_gallery_change(ch);
            bm_counter_inc(sh->c_skipped);
            BM_LOGF(BM_LOG_WARN, "gallery record not in storage form skipped",
                    BM_LF_STR("gallery", sh->gallery), BM_LF_INT("shard", sh->shard),
                    BM_LF_INT("offset", offset), BM_LF_STR("error", err));
            return BM_OK;
        }
        bm_wire_free_gallery_change(ch);
    }
    if (!have) {
        if (b->n == b->cap) {
            size_t nc = b->cap ? b->cap * 2 : 1024;
            struct bent *e = realloc(b->e, nc * sizeof *e);
            if (e == NULL)
                return BM_ENOMEM;
            b->e = e;
            uint8_t *r = realloc(b->rows, nc * b->tbytes);
            if (r == NULL)
                return BM_ENOMEM;
            b->rows = r;
            b->cap = nc;
        }
        if (bm_keymap_put(b->idx, k, b->n) != BM_OK)
            return BM_ENOMEM;
        slot = b->n++;
        if (b->n == 1)
            b->first_ms = bm_mono_ms();
    } else if (!b->e[slot].del) {
        b->est_bytes -= gs_row_cost(sh->stride, sh->int8, b->e[slot].idlen);
    }
    struct bent *e = &b->e[slot];
    e->key = k;
    e->offset = offset;
    e->scale = scale;
    e->del = (uint8_t)del;
    e->idlen = (uint8_t)keylen;
    memcpy(e->id, key, keylen);
    e->id[keylen] = '\0';
    if (!del) {
        memcpy(b->rows + slot * b->tbytes, sh->row, b->tbytes);
        b->est_bytes += gs_row_cost(sh->stride, sh->int8, keylen);
    }
    if (offset > b->last_offset)
        b->last_offset = offset;
    b->last_ms = bm_mono_ms();
    return BM_OK;
}

int bm_gshard_add(struct bm_gshard *sh, int64_t offset, const void *key, size_t keylen,
                  const void *value, size_t valuelen)
{
    if (offset < sh->man->log_offset)
        return BM_OK; /* already sealed (a replay after a crash or rebuild) */
    return gs_buffer_record(sh, &sh->buf, offset, key, keylen, value, valuelen);
}

int bm_gshard_add_keyed(struct bm_gshard *sh, int64_t offset, uint64_t subject_key,
                        const char *id, size_t idlen, const void *value, size_t valuelen)
{
    if (offset < sh->man->log_offset || id == NULL || idlen < 1 || idlen > BM_SUBJECT_ID_MAX)
        return BM_OK;
    return buffer_keyed(sh, &sh->buf, offset, subject_key, id, idlen, value, valuelen);
}
