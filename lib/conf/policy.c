/* Authorisation policy and Ed25519 signatures; see policy.h and
 * docs/operations.md "Policy and signing keys".
 *
 * The file is walked with libyaml's document API like the configuration
 * (conf.c): every mapping key is looked up in a fixed set and anything else
 * is an error naming its line, because a misspelt "require_signature" that
 * was silently ignored would turn signing off.
 *
 * Invariant: every struct agency in a policy has a unique name, unique
 * gallery grants and unique key ids, each key an EVP_PKEY of type Ed25519;
 * an agency that requires signatures has at least one key. Any error path
 * can call bm_policy_destroy on a half-built policy. */
#include "conf/policy.h"

#include "common/err.h"
#include "common/file.h"

#include <errno.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define MAX_FILE_BYTES (1u << 20)
#define MAX_AGENCY_BYTES 128   /* MatchJob.agency limit (docs/wire.md) */
#define MAX_GALLERY_BYTES 64
#define ED25519_PUB_BYTES 32
#define ED25519_SIG_BYTES 64

struct pkey {
    char id[BM_POLICY_KEY_ID_MAX + 1];
    EVP_PKEY *k;              /* Ed25519 public key, owned */
};

struct grant {
    char gallery[MAX_GALLERY_BYTES + 1]; /* a gallery name or "*" */
    unsigned ops;             /* enum bm_policy_op bits */
};

struct agency {
    char *name;               /* owned */
    bool require_signature;
    struct bm_policy_results results;
    struct grant *grants;
    size_t ngrants;
    struct pkey *keys;
    size_t nkeys;
};

struct bm_policy {
    struct agency *agencies;
    size_t n;
};

struct bm_signer {
    char id[BM_POLICY_KEY_ID_MAX + 1];
    EVP_PKEY *k;              /* Ed25519 private key, owned */
};

/* ---- encodings ----------------------------------------------------------- */

static int b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Strict standard base64 with '=' padding: the length is a multiple of 4,
 * padding only at the end, no whitespace, unused bits zero (so each byte
 * string has exactly one accepted spelling). Returns the decoded length or
 * -1; writes at most 'cap' bytes. */
static long b64_decode(const char *s, size_t n, uint8_t *out, size_t cap)
{
    if (n == 0 || n % 4 != 0)
        return -1;
    size_t pad = s[n - 1] == '=' ? (s[n - 2] == '=' ? 2 : 1) : 0;
    size_t outn = n / 4 * 3 - pad;
    if (outn > cap)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        for (int j = 0; j < 4; j++) {
            bool padded = i + 4 == n && (size_t)j >= 4 - pad;
            v[j] = padded ? 0 : b64_val((unsigned char)s[i + (size_t)j]);
            if (v[j] < 0)
                return -1;
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 |
                     (uint32_t)v[3];
        uint8_t b[3] = {(uint8_t)(w >> 16), (uint8_t)(w >> 8), (uint8_t)w};
        for (int j = 0; j < 3 && o < outn; j++)
            out[o++] = b[j];
        if (i + 4 == n && ((pad == 1 && (w & 0xff) != 0) || (pad == 2 && (w & 0xffff) != 0)))
            return -1;
    }
    return (long)outn;
}

/* Base64 of n bytes into out (4 * ceil(n / 3) + 1 bytes needed). */
static int b64_encode(const uint8_t *in, size_t n, char *out, size_t cap)
{
    if (cap < 4 * ((n + 2) / 3) + 1)
        return BM_ERANGE;
    EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    return BM_OK;
}

static int hex_val(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool valid_key_id(const char *s, size_t n)
{
    if (n == 0 || n > BM_POLICY_KEY_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static bool valid_gallery(const char *s)
{
    size_t n = strlen(s);
    if (strcmp(s, "*") == 0)
        return true;
    if (n == 0 || n > MAX_GALLERY_BYTES)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-'))
            return false;
    return true;
}

/* An Ed25519 public key from the policy's text: a PEM "PUBLIC KEY" block,
 * 64 hex digits or base64 of the raw 32 bytes. NULL if none of these. */
static EVP_PKEY *parse_public(const char *s)
{
    size_t n = strlen(s);
    uint8_t raw[ED25519_PUB_BYTES + 3];
    if (strstr(s, "-----BEGIN") != NULL) {
        BIO *b = BIO_new_mem_buf(s, (int)n);
        EVP_PKEY *k = b ? PEM_read_bio_PUBKEY(b, NULL, NULL, NULL) : NULL;
        BIO_free(b);
        if (k != NULL && EVP_PKEY_get_base_id(k) != EVP_PKEY_ED25519) {
            EVP_PKEY_free(k);
            k = NULL;
        }
        return k;
    }
    if (n == 2 * ED25519_PUB_BYTES) {
        for (size_t i = 0; i < ED25519_PUB_BYTES; i++) {
            int hi = hex_val((unsigned char)s[2 * i]), lo = hex_val((unsigned char)s[2 * i + 1]);
            if (hi < 0 || lo < 0)
                return NULL;
            raw[i] = (uint8_t)(hi << 4 | lo);
        }
    } else if (b64_decode(s, n, raw, sizeof raw) != ED25519_PUB_BYTES) {
        return NULL;
    }
    return EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, raw, ED25519_PUB_BYTES);
}

/* ---- YAML ---------------------------------------------------------------- */

struct loader {
    struct bm_policy *p;
    yaml_document_t *doc;
    const char *name;
    char *err;
    size_t errlen;
};

static unsigned long line_of(const yaml_node_t *n)
{
    return (unsigned long)n->start_mark.line + 1;
}

static const char *scalar(const yaml_node_t *n)
{
    return n != NULL && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* A mapping key; map_check has refused non-scalar keys before any caller
 * uses this, so "" never shows up in practice. */
static const char *key_name(const yaml_node_t *k)
{
    const char *s = scalar(k);
    return s != NULL ? s : "";
}

static bool is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *v = scalar(n);
    return strcmp(v, "") == 0 || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 ||
           strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0;
}

static int fail(struct loader *L, int rc, const yaml_node_t *at, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Record "<name>:<line>: <message>" and return rc. */
static int fail(struct loader *L, int rc, const yaml_node_t *at, const char *fmt, ...)
{
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return bm_seterr(L->err, L->errlen, rc, "%s:%lu: %s", L->name, at ? line_of(at) : 0ul, msg);
}

/* A mapping's pairs with checked scalar keys; no duplicates. */
static int map_check(struct loader *L, yaml_node_t *map, const char *what)
{
    if (map->type != YAML_MAPPING_NODE)
        return fail(L, BM_EINVAL, map, "'%s' must be a map", what);
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(L->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(L->doc, p->value);
        if (scalar(k) == NULL || v == NULL)
            return fail(L, BM_EINVAL, k ? k : map, "keys of '%s' must be plain names", what);
        for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++)
            if (strcmp(key_name(yaml_document_get_node(L->doc, q->key)), key_name(k)) == 0)
                return fail(L, BM_EINVAL, k, "duplicate key '%s.%s'", what, key_name(k));
        if (is_null(v))
            return fail(L, BM_EINVAL, v, "'%s.%s' has no value", what, key_name(k));
    }
    return BM_OK;
}

static int load_ops(struct loader *L, yaml_node_t *seq, const char *path, unsigned *ops)
{
    static const char *const names[] = {"identify", "verify", "enroll", "delete", "admin"};
    if (seq->type != YAML_SEQUENCE_NODE)
        return fail(L, BM_EINVAL, seq, "'%s' must be a list of operations", path);
    *ops = 0;
    for (yaml_node_item_t *it = seq->data.sequence.items.start; it < seq->data.sequence.items.top;
         it++) {
        yaml_node_t *n = yaml_document_get_node(L->doc, *it);
        const char *s = scalar(n);
        unsigned bit = 0;
        for (unsigned i = 0; s != NULL && i < 5; i++)
            if (strcmp(s, names[i]) == 0)
                bit = 1u << i;
        if (bit == 0)
            return fail(L, BM_EINVAL, n ? n : seq,
                        "'%s': operations are identify, verify, enroll, delete, admin, not '%s'",
                        path,
                        s ? s : "(not a name)");
        if (*ops & bit)
            return fail(L, BM_EINVAL, n, "'%s': duplicate operation '%s'", path, s);
        *ops |= bit;
    }
    return BM_OK;
}

static int load_galleries(struct loader *L, struct agency *a, yaml_node_t *map, const char *path)
{
    int rc = map_check(L, map, path);
    if (rc != BM_OK)
        return rc;
    size_t n = (size_t)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
    a->grants = calloc(n + 1, sizeof *a->grants);
    if (a->grants == NULL)
        return bm_seterr(L->err, L->errlen, BM_ENOMEM, "out of memory");
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(L->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(L->doc, p->value);
        const char *g = key_name(k);
        if (!valid_gallery(g))
            return fail(L, BM_EINVAL, k,
                        "'%s': '%s' is not a gallery name (1-64 of [A-Za-z0-9_-]) or \"*\"", path,
                        g);
        char sub[512];
        snprintf(sub, sizeof sub, "%s.%s", path, g);
        struct grant *gr = &a->grants[a->ngrants];
        snprintf(gr->gallery, sizeof gr->gallery, "%s", g);
        if ((rc = load_ops(L, v, sub, &gr->ops)) != BM_OK)
            return rc;
        a->ngrants++;
    }
    return BM_OK;
}

static int load_keys(struct loader *L, struct agency *a, yaml_node_t *map, const char *path)
{
    int rc = map_check(L, map, path);
    if (rc != BM_OK)
        return rc;
    size_t n = (size_t)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
    a->keys = calloc(n + 1, sizeof *a->keys);
    if (a->keys == NULL)
        return bm_seterr(L->err, L->errlen, BM_ENOMEM, "out of memory");
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(L->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(L->doc, p->value);
        const char *id = key_name(k);
        if (!valid_key_id(id, strlen(id)))
            return fail(L, BM_EINVAL, k, "'%s': key id '%s' must be 1-64 of [A-Za-z0-9._-]",
                        path, id);
        if (scalar(v) == NULL)
            return fail(L, BM_EINVAL, v, "'%s.%s' must be a single value", path, id);
        EVP_PKEY *key = parse_public(scalar(v));
        if (key == NULL)
            return fail(L, BM_EINVAL, v,
                        "'%s.%s' is not an Ed25519 public key (PEM, 64 hex digits or base64 of "
                        "32 bytes)",
                        path, id);
        struct pkey *pk = &a->keys[a->nkeys++];
        snprintf(pk->id, sizeof pk->id, "%s", id);
        pk->k = key;
    }
    return BM_OK;
}

/* A number in [lo, hi] from a scalar; false when it is not one. */
static bool number_in(const yaml_node_t *v, double lo, double hi, double *out)
{
    const char *s = scalar(v);
    if (s == NULL || *s == '\0')
        return false;
    char *end = NULL;
    errno = 0;
    double d = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(d >= lo && d <= hi))
        return false;
    *out = d;
    return true;
}

static int load_results(struct loader *L, struct agency *a, yaml_node_t *map, const char *path)
{
    int rc = map_check(L, map, path);
    if (rc != BM_OK)
        return rc;
    struct bm_policy_results *r = &a->results;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(L->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(L->doc, p->value);
        const char *key = key_name(k), *sv = scalar(v);
        double d = 0;
        if (strcmp(key, "max_top_k") == 0) {
            if (!number_in(v, 1, 1000, &d) || d != (double)(uint32_t)d)
                return fail(L, BM_EINVAL, v, "'%s.max_top_k' must be an integer 1..1000", path);
            r->max_top_k = (uint32_t)d;
        } else if (strcmp(key, "min_threshold") == 0) {
            if (!number_in(v, -1e30, 1e30, &d))
                return fail(L, BM_EINVAL, v, "'%s.min_threshold' must be a number", path);
            r->has_min_threshold = true;
            r->min_threshold = (float)d;
        } else if (strcmp(key, "detail") == 0) {
            if (sv != NULL && strcmp(sv, "ids_scores") == 0)
                r->detail = BM_POLICY_DETAIL_IDS_SCORES;
            else if (sv != NULL && strcmp(sv, "ids") == 0)
                r->detail = BM_POLICY_DETAIL_IDS;
            else if (sv != NULL && strcmp(sv, "hit_nohit") == 0)
                r->detail = BM_POLICY_DETAIL_HIT_NOHIT;
            else
                return fail(L, BM_EINVAL, v,
                            "'%s.detail' must be hit_nohit, ids or ids_scores", path);
        } else if (strcmp(key, "score_decimals") == 0) {
            if (!number_in(v, 0, 6, &d) || d != (double)(int)d)
                return fail(L, BM_EINVAL, v, "'%s.score_decimals' must be an integer 0..6",
                            path);
            r->score_decimals = (int)d;
        } else if (strcmp(key, "internal_fields") == 0) {
            if (sv != NULL && strcmp(sv, "true") == 0)
                r->internal_fields = true;
            else if (sv != NULL && strcmp(sv, "false") == 0)
                r->internal_fields = false;
            else
                return fail(L, BM_EINVAL, v, "'%s.internal_fields' must be true or false", path);
        } else {
            return fail(L, BM_EINVAL, k, "unknown key '%s.%s'", path, key);
        }
    }
    return BM_OK;
}

static int load_agency(struct loader *L, struct agency *a, yaml_node_t *kn, yaml_node_t *map)
{
    char path[256];
    snprintf(path, sizeof path, "agencies.%.200s", a->name);
    int rc = map_check(L, map, path);
    if (rc != BM_OK)
        return rc;
    bool has_galleries = false;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(L->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(L->doc, p->value);
        const char *key = key_name(k);
        char sub[320];
        snprintf(sub, sizeof sub, "%s.%s", path, key);
        if (strcmp(key, "require_signature") == 0) {
            const char *s = scalar(v);
            if (s != NULL && strcmp(s, "true") == 0)
                a->require_signature = true;
            else if (s != NULL && strcmp(s, "false") == 0)
                a->require_signature = false;
            else
                return fail(L, BM_EINVAL, v, "'%s' must be true or false", sub);
        } else if (strcmp(key, "galleries") == 0) {
            has_galleries = true;
            rc = load_galleries(L, a, v, sub);
        } else if (strcmp(key, "keys") == 0) {
            rc = load_keys(L, a, v, sub);
        } else if (strcmp(key, "results") == 0) {
            rc = load_results(L, a, v, sub);
        } else {
            rc = fail(L, BM_EINVAL, k, "unknown key '%s'", sub);
        }
        if (rc != BM_OK)
            return rc;
    }
    if (!has_galleries)
        return fail(L, BM_EINVAL, kn, "'%s' needs 'galleries' (a map of gallery -> operations)",
                    path);
    if (a->require_signature && a->nkeys == 0)
        return fail(L, BM_EINVAL, kn,
                    "'%s' requires signatures but lists no keys: nothing it sends could pass",
                    path);
    return BM_OK;
}

static int load_root(struct loader *L, yaml_node_t *root)
{
    int rc = map_check(L, root, "(top level)");
    if (rc != BM_OK)
        return rc;
    yaml_node_t *agencies = NULL;
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(L->doc, p->key);
        if (strcmp(key_name(k), "agencies") != 0)
            return fail(L, BM_EINVAL, k, "unknown key '%s'", key_name(k));
        agencies = yaml_document_get_node(L->doc, p->value);
    }
    if (agencies == NULL)
        return fail(L, BM_EINVAL, root, "the policy needs 'agencies'");
    if ((rc = map_check(L, agencies, "agencies")) != BM_OK)
        return rc;
    size_t n = (size_t)(agencies->data.mapping.pairs.top - agencies->data.mapping.pairs.start);
    L->p->agencies = calloc(n + 1, sizeof *L->p->agencies);
    if (L->p->agencies == NULL)
        return bm_seterr(L->err, L->errlen, BM_ENOMEM, "out of memory");
    for (yaml_node_pair_t *p = agencies->data.mapping.pairs.start;
         p < agencies->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(L->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(L->doc, p->value);
        const char *name = key_name(k);
        if (name[0] == '\0' || strlen(name) > MAX_AGENCY_BYTES)
            return fail(L, BM_EINVAL, k, "agency names are 1-128 bytes");
        struct agency *a = &L->p->agencies[L->p->n++];
        a->require_signature = true; /* secure by default: opting out is explicit */
        a->results.score_decimals = -1;
        if ((a->name = strdup(name)) == NULL)
            return bm_seterr(L->err, L->errlen, BM_ENOMEM, "out of memory");
        if ((rc = load_agency(L, a, k, v)) != BM_OK)
            return rc;
    }
    return BM_OK;
}

struct bm_policy *bm_policy_parse(const char *yaml, size_t len, const char *name, char *err,
                                  size_t errlen)
{
    struct bm_policy *p = calloc(1, sizeof *p);
    if (p == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
        return NULL;
    }
    struct loader L = {p, NULL, name ? name : "<string>", err, errlen};
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser)) {
        bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
        free(p);
        return NULL;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)(yaml ? yaml : ""), len);
    int rc = BM_OK;
    if (!yaml_parser_load(&parser, &doc)) {
        rc = bm_seterr(err, errlen, BM_EPROTO, "%s:%lu: YAML error: %s", L.name,
                       (unsigned long)parser.problem_mark.line + 1,
                       parser.problem ? parser.problem : "unknown");
    } else {
        L.doc = &doc;
        yaml_node_t *root = yaml_document_get_root_node(&doc);
        if (root == NULL)
            rc = bm_seterr(err, errlen, BM_EINVAL, "%s: the policy is empty", L.name);
        else
            rc = load_root(&L, root);
        yaml_document_delete(&doc);
        if (rc == BM_OK) {
            /* A second document would be silently ignored: refuse it. */
            yaml_document_t more;
            if (!yaml_parser_load(&parser, &more)) {
                rc = bm_seterr(err, errlen, BM_EPROTO, "%s:%lu: YAML error: %s", L.name,
                               (unsigned long)parser.problem_mark.line + 1,
                               parser.problem ? parser.problem : "unknown");
            } else {
                yaml_node_t *r2 = yaml_document_get_root_node(&more);
                if (r2 != NULL)
                    rc = bm_seterr(err, errlen, BM_EINVAL,
                                   "%s:%lu: only one YAML document is allowed", L.name,
                                   line_of(r2));
                yaml_document_delete(&more);
            }
        }
    }
    yaml_parser_delete(&parser);
    if (rc != BM_OK) {
        bm_policy_destroy(p);
        return NULL;
    }
    return p;
}

struct bm_policy *bm_policy_load(const char *path, char *err, size_t errlen)
{
    char *text;
    size_t n;
    if (bm_file_read(path, MAX_FILE_BYTES, &text, &n, err, errlen) != BM_OK)
        return NULL;
    struct bm_policy *p = bm_policy_parse(text, n, path, err, errlen);
    free(text);
    return p;
}

void bm_policy_destroy(struct bm_policy *p)
{
    if (p == NULL)
        return;
    for (size_t i = 0; i < p->n; i++) {
        struct agency *a = &p->agencies[i];
        free(a->name);
        free(a->grants);
        for (size_t k = 0; k < a->nkeys; k++)
            EVP_PKEY_free(a->keys[k].k);
        free(a->keys);
    }
    free(p->agencies);
    free(p);
}

size_t bm_policy_agency_count(const struct bm_policy *p)
{
    return p ? p->n : 0;
}

const char *bm_policy_op_name(enum bm_policy_op op)
{
    switch (op) {
    case BM_POLICY_OP_IDENTIFY:
        return "identify";
    case BM_POLICY_OP_VERIFY:
        return "verify";
    case BM_POLICY_OP_ENROLL:
        return "enroll";
    case BM_POLICY_OP_DELETE:
        return "delete";
    case BM_POLICY_OP_ADMIN:
        return "admin";
    }
    return "?";
}

/* ---- decisions ----------------------------------------------------------- */

void bm_policy_results(const struct bm_policy *p, const char *agency,
                       struct bm_policy_results *out)
{
    const struct agency *a = NULL;
    for (size_t i = 0; p != NULL && agency != NULL && i < p->n && a == NULL; i++)
        if (strcmp(p->agencies[i].name, agency) == 0)
            a = &p->agencies[i];
    if (a != NULL) {
        *out = a->results;
        return;
    }
    *out = (struct bm_policy_results){0};
    out->score_decimals = -1;
    out->internal_fields = true;
}


/* Drop a UTF-8 sequence cut short at the end of 's' (by a precision or the
 * buffer size), so a reason built from a client's string stays valid UTF-8
 * and survives the rejection's strict-client check. */
static void utf8_trim(char *s)
{
    size_t n = strlen(s), i = n, cont = 0;
    while (i > 0 && ((unsigned char)s[i - 1] & 0xC0) == 0x80 && cont < 3) {
        i--;
        cont++;
    }
    if (i == 0 || ((unsigned char)s[i - 1] & 0x80) == 0)
        return;
    unsigned char lead = (unsigned char)s[i - 1];
    size_t need = lead >= 0xF0 ? 3 : lead >= 0xE0 ? 2 : lead >= 0xC0 ? 1 : 0;
    if (cont < need)
        s[i - 1] = '\0';
}

/* At most 64 bytes of a client's string, cut at a character boundary. */
#define CLIP_CAP 65
static const char *clip(const char *s, char buf[CLIP_CAP])
{
    snprintf(buf, CLIP_CAP, "%s", s ? s : "");
    utf8_trim(buf);
    return buf;
}

static enum bm_policy_verdict deny(enum bm_policy_verdict v, char *why, size_t whylen,
                                   const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static enum bm_policy_verdict deny(enum bm_policy_verdict v, char *why, size_t whylen,
                                   const char *fmt, ...)
{
    if (why != NULL && whylen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, whylen, fmt, ap);
        va_end(ap);
        utf8_trim(why);
    }
    return v;
}

static bool ed25519_verify(EVP_PKEY *k, const uint8_t *sig, const void *msg, size_t len)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = ctx != NULL && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, k) == 1 &&
              EVP_DigestVerify(ctx, sig, ED25519_SIG_BYTES,
                               (const unsigned char *)(len ? msg : ""), len) == 1;
    EVP_MD_CTX_free(ctx);
    return ok;
}

/* The bytes a record signature covers (docs/wire.md section 13): a fixed
 * label, then type, topic, key, agency and id each as a 4-byte big-endian
 * length and the bytes, then the timestamp as 8 bytes big-endian, then the
 * value as an 8-byte length and the bytes. Lengths make every field
 * boundary unambiguous, so no two records share signed bytes. Returns a
 * malloc'd buffer (caller frees) or NULL when out of memory or a field is
 * over 4 GiB. */
#define SIG_LABEL "biomatch-record-signature-v2"
static uint8_t *record_message(const struct bm_sig_record *r, int64_t ts, size_t *n)
{
    const void *f[5] = {r->type, r->topic, r->key, r->agency, r->id};
    size_t fl[5] = {r->type ? strlen(r->type) : 0, r->topic ? strlen(r->topic) : 0,
                    r->key ? r->keylen : 0, r->agency ? strlen(r->agency) : 0,
                    r->id ? strlen(r->id) : 0};
    size_t total = sizeof SIG_LABEL + 8 + 8 + r->len;
    for (int i = 0; i < 5; i++) {
        if (fl[i] > UINT32_MAX)
            return NULL;
        total += 4 + fl[i];
    }
    uint8_t *buf = malloc(total), *o = buf;
    if (buf == NULL)
        return NULL;
    memcpy(o, SIG_LABEL, sizeof SIG_LABEL); /* with its NUL */
    o += sizeof SIG_LABEL;
    for (int i = 0; i < 5; i++) {
        for (int b = 3; b >= 0; b--)
            *o++ = (uint8_t)(fl[i] >> (8 * b));
        if (fl[i] > 0)
            memcpy(o, f[i], fl[i]);
        o += fl[i];
    }
    for (int b = 7; b >= 0; b--)
        *o++ = (uint8_t)((uint64_t)ts >> (8 * b));
    for (int b = 7; b >= 0; b--)
        *o++ = (uint8_t)((uint64_t)r->len >> (8 * b));
    if (r->len > 0)
        memcpy(o, r->value, r->len);
    *n = total;
    return buf;
}

/* "<key id>:<ts>:<base64>" into its parts; false when it does not parse.
 * The timestamp is 1-19 decimal digits (no sign, no leading zeros except
 * "0"), so it has one spelling. */
static bool parse_sig(const char *sig, size_t siglen, char id[BM_POLICY_KEY_ID_MAX + 1],
                      int64_t *ts, const char **b64, size_t *b64len)
{
    const char *c1 = memchr(sig, ':', siglen);
    if (c1 == NULL || !valid_key_id(sig, (size_t)(c1 - sig)))
        return false;
    const char *t = c1 + 1, *end = sig + siglen;
    const char *c2 = memchr(t, ':', (size_t)(end - t));
    size_t tn = c2 ? (size_t)(c2 - t) : 0;
    if (c2 == NULL || tn == 0 || tn > 19 || (tn > 1 && t[0] == '0'))
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < tn; i++) {
        if (t[i] < '0' || t[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(t[i] - '0');
    }
    if (v > INT64_MAX)
        return false;
    snprintf(id, BM_POLICY_KEY_ID_MAX + 1, "%.*s", (int)(c1 - sig), sig);
    *ts = (int64_t)v;
    *b64 = c2 + 1;
    *b64len = (size_t)(end - *b64);
    return true;
}

static const struct agency *find_agency(const struct bm_policy *p, const char *name)
{
    for (size_t i = 0; name != NULL && i < p->n; i++)
        if (strcmp(p->agencies[i].name, name) == 0)
            return &p->agencies[i];
    return NULL;
}

enum bm_policy_verdict bm_policy_authenticate(const struct bm_policy *p,
                                              const struct bm_sig_record *r, const char *sig,
                                              size_t siglen, int64_t now_ms, int64_t window_ms,
                                              int64_t *ts_ms, char *why, size_t whylen)
{
    const enum bm_policy_verdict B = BM_POLICY_BAD_SIGNATURE;
    if (why != NULL && whylen > 0)
        why[0] = '\0';
    *ts_ms = 0;
    char cb[CLIP_CAP];
    const struct agency *a = find_agency(p, r->agency);
    if (a == NULL)
        return deny(BM_POLICY_UNAUTHORIZED, why, whylen, "agency '%s' is not in the policy",
                    clip(r->agency, cb));
    if (sig == NULL) {
        if (!a->require_signature)
            return BM_POLICY_ALLOW;
        return deny(B, why, whylen, "agency '%s' requires signed records; no %s header",
                    clip(a->name, cb), BM_POLICY_SIG_HEADER);
    }
    char id[BM_POLICY_KEY_ID_MAX + 1];
    int64_t ts;
    const char *b64;
    size_t b64len;
    if (!parse_sig(sig, siglen, id, &ts, &b64, &b64len))
        return deny(B, why, whylen, "%s header is not '<key id>:<unix ms>:<base64 signature>'",
                    BM_POLICY_SIG_HEADER);
    const struct pkey *pk = NULL;
    for (size_t i = 0; i < a->nkeys && pk == NULL; i++)
        if (strcmp(a->keys[i].id, id) == 0)
            pk = &a->keys[i];
    if (pk == NULL)
        return deny(B, why, whylen, "key id '%s' is not a key of agency '%s'", id,
                    clip(a->name, cb));
    uint8_t raw[ED25519_SIG_BYTES + 3];
    if (b64_decode(b64, b64len, raw, sizeof raw) != ED25519_SIG_BYTES)
        return deny(B, why, whylen, "signature of key '%s' is not base64 of 64 bytes", id);
    size_t mlen = 0;
    uint8_t *msg = record_message(r, ts, &mlen);
    if (msg == NULL)
        return deny(B, why, whylen, "record too large to verify");
    bool ok = ed25519_verify(pk->k, raw, msg, mlen);
    free(msg);
    if (!ok)
        return deny(B, why, whylen, "signature of key '%s' does not verify", id);
    /* Checked after the signature, so an unsigned sender cannot learn the
     * window; in this order a stale record is known to be a real replay. */
    if (ts < now_ms - window_ms || ts > now_ms + window_ms)
        return deny(BM_POLICY_STALE, why, whylen,
                    "signed at %lld, outside %lld ms of the coordinator's clock (%lld)",
                    (long long)ts, (long long)window_ms, (long long)now_ms);
    *ts_ms = ts;
    return BM_POLICY_ALLOW;
}

enum bm_policy_verdict bm_policy_permit(const struct bm_policy *p, const char *agency,
                                        const char *gallery, enum bm_policy_op op, char *why,
                                        size_t whylen)
{
    if (why != NULL && whylen > 0)
        why[0] = '\0';
    char cb[CLIP_CAP];
    const struct agency *a = find_agency(p, agency);
    for (size_t i = 0; a != NULL && gallery != NULL && i < a->ngrants; i++) {
        const struct grant *g = &a->grants[i];
        if ((strcmp(g->gallery, gallery) == 0 || strcmp(g->gallery, "*") == 0) && (g->ops & op))
            return BM_POLICY_ALLOW;
    }
    return deny(BM_POLICY_UNAUTHORIZED, why, whylen, "agency '%s' may not %s on this gallery",
                clip(agency, cb), bm_policy_op_name(op));
}

/* ---- signing ------------------------------------------------------------- */

struct bm_signer *bm_signer_from_pem(const char *pem, size_t len, const char *key_id, char *err,
                                     size_t errlen)
{
    if (key_id == NULL || !valid_key_id(key_id, strlen(key_id))) {
        bm_seterr(err, errlen, BM_EINVAL, "key id must be 1-64 of [A-Za-z0-9._-]");
        return NULL;
    }
    if (len > INT32_MAX) {
        bm_seterr(err, errlen, BM_ERANGE, "PEM too large");
        return NULL;
    }
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    if (k == NULL || EVP_PKEY_get_base_id(k) != EVP_PKEY_ED25519) {
        EVP_PKEY_free(k);
        bm_seterr(err, errlen, BM_EINVAL, "not an unencrypted Ed25519 private key in PEM");
        return NULL;
    }
    struct bm_signer *s = calloc(1, sizeof *s);
    if (s == NULL) {
        EVP_PKEY_free(k);
        bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
        return NULL;
    }
    snprintf(s->id, sizeof s->id, "%s", key_id);
    s->k = k;
    return s;
}

struct bm_signer *bm_signer_load(const char *path, const char *key_id, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        bm_seterr(err, errlen, BM_EIO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf, f);
    bool bad = ferror(f) != 0 || n == sizeof buf;
    fclose(f);
    if (bad) {
        bm_seterr(err, errlen, BM_EIO, "%s: read error or larger than 8 KiB", path);
        return NULL;
    }
    char msg[256];
    struct bm_signer *s = bm_signer_from_pem(buf, n, key_id, msg, sizeof msg);
    OPENSSL_cleanse(buf, sizeof buf); /* private key material */
    if (s == NULL)
        bm_seterr(err, errlen, BM_EINVAL, "%s: %s", path, msg);
    return s;
}

int bm_signer_sign_record(const struct bm_signer *s, const struct bm_sig_record *r,
                          int64_t ts_ms, char *out, size_t outlen, char *err, size_t errlen)
{
    if (ts_ms < 0)
        return bm_seterr(err, errlen, BM_EINVAL, "signature timestamp must not be negative");
    size_t mlen = 0;
    uint8_t *msg = record_message(r, ts_ms, &mlen);
    if (msg == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "out of memory building the signed bytes");
    uint8_t sig[ED25519_SIG_BYTES];
    size_t siglen = sizeof sig;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = ctx != NULL && EVP_DigestSignInit(ctx, NULL, NULL, NULL, s->k) == 1 &&
              EVP_DigestSign(ctx, sig, &siglen, msg, mlen) == 1 && siglen == ED25519_SIG_BYTES;
    EVP_MD_CTX_free(ctx);
    free(msg);
    if (!ok)
        return bm_seterr(err, errlen, BM_EINVAL, "Ed25519 signing failed");
    int n = snprintf(out, outlen, "%s:%lld:", s->id, (long long)ts_ms);
    if (n < 0 || (size_t)n >= outlen ||
        b64_encode(sig, sizeof sig, out + n, outlen - (size_t)n) != BM_OK)
        return bm_seterr(err, errlen, BM_ERANGE, "signature buffer too small");
    return BM_OK;
}

static int public_b64(EVP_PKEY *k, char *out, size_t outlen)
{
    uint8_t raw[ED25519_PUB_BYTES];
    size_t n = sizeof raw;
    if (EVP_PKEY_get_raw_public_key(k, raw, &n) != 1 || n != sizeof raw)
        return BM_EINVAL;
    return b64_encode(raw, n, out, outlen);
}

int bm_signer_public_b64(const struct bm_signer *s, char *out, size_t outlen)
{
    return public_b64(s->k, out, outlen);
}

void bm_signer_destroy(struct bm_signer *s)
{
    if (s == NULL)
        return;
    EVP_PKEY_free(s->k);
    free(s);
}

int bm_signer_keygen(char **pem, char *pub, size_t publen, char *err, size_t errlen)
{
    *pem = NULL;
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    if (k == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "Ed25519 key generation failed");
    int rc = public_b64(k, pub, publen);
    BIO *b = rc == BM_OK ? BIO_new(BIO_s_mem()) : NULL;
    char *data = NULL;
    long n = 0;
    if (b != NULL && PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL) == 1)
        n = BIO_get_mem_data(b, &data);
    if (n > 0 && (*pem = malloc((size_t)n + 1)) != NULL) {
        memcpy(*pem, data, (size_t)n);
        (*pem)[n] = '\0';
    }
    BIO_free(b); /* BIO_s_mem frees its buffer (cleared by OpenSSL on free) */
    EVP_PKEY_free(k);
    if (*pem == NULL)
        return bm_seterr(err, errlen, rc != BM_OK ? rc : BM_ENOMEM,
                         "writing the new key failed");
    return BM_OK;
}
