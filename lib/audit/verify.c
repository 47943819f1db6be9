/* Verifying audit chains (see verify.h). Records are kept as small summaries
 * (no content beyond what the chain rules need), sorted by writer and seq
 * when the feed ends; findings are collected and reported sorted by
 * position, so the first line a reader sees is the earliest damage. */
#include "audit/verify.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit/chain.h"
#include "crypto/keyring.h"
#include "wire/decode.h"

#define MAX_RECORD_BYTES (1u << 20)

struct rec {
    char *writer;
    uint64_t seq;
    int32_t partition;
    int64_t offset;
    int64_t time_ms;
    uint8_t prev[BM_AUDIT_HASH_BYTES];
    uint8_t hash[BM_AUDIT_HASH_BYTES];
    unsigned has_prev : 1;
    unsigned valid : 1;       /* the hash verified under a key this verifier trusts */
    unsigned checkpoint : 1;
    unsigned final : 1;
    uint32_t interval_ms;     /* checkpoints: the writer's T */
};

struct finding {
    enum bm_audit_finding_kind kind;
    char *writer;
    uint64_t seq;
    int32_t partition;
    int64_t offset;
    char detail[200];
};

struct bm_audit_verifier {
    struct bm_audit_verify_opts o;
    struct rec *recs;
    size_t n, cap;
    struct finding *fs;
    size_t nf, capf;
    uint64_t checkpoints;
    int oom;
};

const char *bm_audit_finding_name(enum bm_audit_finding_kind k)
{
    switch (k) {
    case BM_AUDIT_MODIFIED: return "MODIFIED";
    case BM_AUDIT_INSERTED: return "INSERTED";
    case BM_AUDIT_DELETED: return "DELETED";
    case BM_AUDIT_TRUNCATED: return "TRUNCATED";
    case BM_AUDIT_UNKEYED: return "UNKEYED";
    }
    return "?";
}

struct bm_audit_verifier *bm_audit_verifier_new(const struct bm_audit_verify_opts *o,
                                                char *err, size_t errlen)
{
    struct bm_audit_verifier *v = calloc(1, sizeof *v);
    if (v == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "audit verify: out of memory");
        return NULL;
    }
    v->o = *o;
    if (v->o.default_interval_ms == 0)
        v->o.default_interval_ms = 60000;
    return v;
}

void bm_audit_verifier_free(struct bm_audit_verifier *v)
{
    if (v == NULL)
        return;
    for (size_t i = 0; i < v->n; i++)
        free(v->recs[i].writer);
    for (size_t i = 0; i < v->nf; i++)
        free(v->fs[i].writer);
    free(v->recs);
    free(v->fs);
    free(v);
}

static void add_finding(struct bm_audit_verifier *v, enum bm_audit_finding_kind kind,
                        const char *writer, uint64_t seq, int32_t partition, int64_t offset,
                        const char *fmt, ...) __attribute__((format(printf, 7, 8)));

static void add_finding(struct bm_audit_verifier *v, enum bm_audit_finding_kind kind,
                        const char *writer, uint64_t seq, int32_t partition, int64_t offset,
                        const char *fmt, ...)
{
    if (v->nf == v->capf) {
        size_t cap = v->capf ? v->capf * 2 : 16;
        struct finding *fs = realloc(v->fs, cap * sizeof *fs);
        if (fs == NULL) {
            v->oom = 1;
            return;
        }
        v->fs = fs;
        v->capf = cap;
    }
    struct finding *f = &v->fs[v->nf];
    size_t wl = strlen(writer);
    f->writer = malloc(wl + 1);
    if (f->writer == NULL) {
        v->oom = 1;
        return;
    }
    memcpy(f->writer, writer, wl + 1);
    f->kind = kind;
    f->seq = seq;
    f->partition = partition;
    f->offset = offset;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->detail, sizeof f->detail, fmt, ap);
    va_end(ap);
    v->nf++;
}

/* The key a record names, NULL when unkeyed; *usable 0 when its hash
 * cannot prove anything to this verifier (finding already added). */
static const uint8_t *record_key(struct bm_audit_verifier *v, const Biomatch__V1__AuditRecord *a,
                                 int32_t partition, int64_t offset, int *usable)
{
    *usable = 1;
    const char *w = a->writer ? a->writer : "";
    if (a->key_id == NULL || a->key_id[0] == '\0') {
        if (v->o.keys != NULL) {
            *usable = 0;
            add_finding(v, BM_AUDIT_UNKEYED, w, a->seq, partition, offset,
                        "unkeyed record where audit keys are in use (forged?)");
        }
        return NULL;
    }
    const uint8_t *k = v->o.keys ? bm_keyring_find(v->o.keys, a->key_id) : NULL;
    if (k == NULL) {
        *usable = 0;
        add_finding(v, BM_AUDIT_UNKEYED, w, a->seq, partition, offset,
                    "audit key \"%.64s\" not available: hash not checked", a->key_id);
    }
    return k;
}

int bm_audit_verifier_add(struct bm_audit_verifier *v, int32_t partition, int64_t offset,
                          const void *value, size_t len)
{
    char err[256];
    Biomatch__V1__AuditRecord *a =
        value != NULL ? bm_wire_decode_audit(value, len, MAX_RECORD_BYTES, err, sizeof err)
                      : NULL;
    if (a == NULL || a->writer == NULL || a->writer[0] == '\0' || a->seq == 0) {
        add_finding(v, BM_AUDIT_INSERTED, a && a->writer ? a->writer : "", a ? a->seq : 0,
                    partition, offset, "%s",
                    a == NULL ? "not an audit record (does not decode)"
                              : "audit record without writer or seq");
        if (a != NULL)
            bm_wire_free_audit(a);
        return v->oom ? BM_ENOMEM : BM_OK;
    }
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 256;
        struct rec *r = realloc(v->recs, cap * sizeof *r);
        if (r == NULL) {
            bm_wire_free_audit(a);
            return BM_ENOMEM;
        }
        v->recs = r;
        v->cap = cap;
    }
    struct rec *r = &v->recs[v->n];
    memset(r, 0, sizeof *r);
    size_t wl = strlen(a->writer);
    if ((r->writer = malloc(wl + 1)) == NULL) {
        bm_wire_free_audit(a);
        return BM_ENOMEM;
    }
    memcpy(r->writer, a->writer, wl + 1);
    r->seq = a->seq;
    r->partition = partition;
    r->offset = offset;
    r->time_ms = a->time_unix_ms;
    r->checkpoint = a->kind == BIOMATCH__V1__AUDIT_RECORD__KIND__KIND_CHECKPOINT;
    r->final = r->checkpoint && a->checkpoint_final;
    r->interval_ms = r->checkpoint ? a->checkpoint_interval_ms : 0;
    if (a->prev_hash.len == BM_AUDIT_HASH_BYTES) {
        memcpy(r->prev, a->prev_hash.data, BM_AUDIT_HASH_BYTES);
        r->has_prev = 1;
    }
    int usable = 1;
    const uint8_t *key = record_key(v, a, partition, offset, &usable);
    if (a->hash.len == BM_AUDIT_HASH_BYTES) {
        memcpy(r->hash, a->hash.data, BM_AUDIT_HASH_BYTES);
        uint8_t h[BM_AUDIT_HASH_BYTES];
        if (bm_audit_mac(a, key, h) != BM_OK) {
            free(r->writer);
            bm_wire_free_audit(a);
            return BM_ENOMEM;
        }
        r->valid = usable && memcmp(h, r->hash, BM_AUDIT_HASH_BYTES) == 0;
    }
    if (r->checkpoint)
        v->checkpoints++;
    if (usable && !r->valid)
        add_finding(v, BM_AUDIT_MODIFIED, r->writer, r->seq, partition, offset,
                    "hash does not verify%s: record changed after sealing or forged",
                    key != NULL ? " under its audit key" : "");
    v->n++;
    bm_wire_free_audit(a);
    return v->oom ? BM_ENOMEM : BM_OK;
}

static int cmp_chain(const void *pa, const void *pb)
{
    const struct rec *a = pa, *b = pb;
    int c = strcmp(a->writer, b->writer);
    if (c != 0)
        return c;
    if (a->seq != b->seq)
        return a->seq < b->seq ? -1 : 1;
    if (a->partition != b->partition)
        return a->partition < b->partition ? -1 : 1;
    return a->offset < b->offset ? -1 : a->offset > b->offset;
}

static int cmp_position(const void *pa, const void *pb)
{
    const struct finding *a = pa, *b = pb;
    if (a->partition != b->partition)
        return a->partition < b->partition ? -1 : 1;
    if (a->offset != b->offset)
        return a->offset < b->offset ? -1 : 1;
    return (int)a->kind - (int)b->kind;
}

/* The rules for one writer's records r[0..n) in seq order. */
static void check_chain(struct bm_audit_verifier *v, const struct rec *r, size_t n)
{
    const char *w = r[0].writer;
    if (v->o.from_beginning && r[0].seq != 1)
        add_finding(v, BM_AUDIT_TRUNCATED, w, r[0].seq, r[0].partition, r[0].offset,
                    "chain starts at seq %" PRIu64 ": seq 1..%" PRIu64
                    " missing (truncated at the front)",
                    r[0].seq, r[0].seq - 1);
    else if (v->o.from_beginning && r[0].has_prev)
        add_finding(v, BM_AUDIT_INSERTED, w, r[0].seq, r[0].partition, r[0].offset,
                    "seq 1 names a previous record");
    size_t last = 0; /* the record the next one must link to */
    uint32_t interval = r[0].checkpoint && r[0].interval_ms ? r[0].interval_ms
                                                            : v->o.default_interval_ms;
    for (size_t i = 1; i < n; i++) {
        const struct rec *p = &r[last], *c = &r[i];
        if (c->checkpoint && c->interval_ms)
            interval = c->interval_ms;
        if (c->seq == p->seq) {
            /* Two records claim one seq: the one whose hash verifies is
             * the chain's (the first, if both do); the other was inserted. */
            const struct rec *in = p->valid || !c->valid ? c : p;
            const struct rec *kept = in == c ? p : c;
            add_finding(v, BM_AUDIT_INSERTED, w, in->seq, in->partition, in->offset,
                        "second record with seq %" PRIu64 " (the chain's is at %d:%" PRId64 ")",
                        in->seq, (int)kept->partition, kept->offset);
            if (kept == c)
                last = i;
            continue;
        }
        if (c->seq != p->seq + 1)
            add_finding(v, BM_AUDIT_DELETED, w, c->seq, c->partition, c->offset,
                        "seq %" PRIu64 "..%" PRIu64 " missing before this record",
                        p->seq + 1, c->seq - 1);
        else if (!c->has_prev || memcmp(c->prev, p->hash, BM_AUDIT_HASH_BYTES) != 0)
            add_finding(v, BM_AUDIT_INSERTED, w, c->seq, c->partition, c->offset,
                        "prev_hash does not link to seq %" PRIu64 " at %d:%" PRId64, p->seq,
                        (int)p->partition, p->offset);
        last = i;
    }
    const struct rec *e = &r[last];
    /* A live writer checkpoints every 'interval'; allow one more for
     * delivery and clock skew. */
    if (!e->final && v->o.now_ms - e->time_ms > 2 * (int64_t)interval)
        add_finding(v, BM_AUDIT_TRUNCATED, w, e->seq, e->partition, e->offset,
                    "chain ends at seq %" PRIu64 " without a final checkpoint and nothing for "
                    "%" PRId64 " ms (checkpoint interval %u ms): records after it were removed, "
                    "or the writer died and has not restarted",
                    e->seq, v->o.now_ms - e->time_ms, interval);
}

int bm_audit_verifier_finish(struct bm_audit_verifier *v, bm_audit_finding_fn fn,
                             void *opaque, struct bm_audit_verify_stats *st)
{
    /* qsort's base must not be NULL, even for no elements. */
    if (v->n > 0)
        qsort(v->recs, v->n, sizeof *v->recs, cmp_chain);
    uint64_t writers = 0;
    for (size_t i = 0; i < v->n;) {
        size_t j = i + 1;
        while (j < v->n && strcmp(v->recs[j].writer, v->recs[i].writer) == 0)
            j++;
        check_chain(v, &v->recs[i], j - i);
        writers++;
        i = j;
    }
    if (v->oom)
        return BM_ENOMEM;
    if (v->nf > 0)
        qsort(v->fs, v->nf, sizeof *v->fs, cmp_position);
    for (size_t i = 0; i < v->nf && fn != NULL; i++) {
        const struct finding *f = &v->fs[i];
        struct bm_audit_finding out = {f->kind,   f->writer, f->seq,
                                       f->partition, f->offset, f->detail};
        fn(&out, opaque);
    }
    if (st != NULL) {
        st->records = v->n;
        st->writers = writers;
        st->checkpoints = v->checkpoints;
        st->findings = v->nf;
    }
    return (int)(v->nf > INT32_MAX ? INT32_MAX : v->nf);
}
