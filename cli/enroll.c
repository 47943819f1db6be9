/* `biomatch enroll`: bulk import. Reads subject ids (one per line) and
 * either a float32 .npy matrix (one row per subject), an iris file
 * (docs/formats.md), or nothing (--delete), and produces one EnrollRequest
 * per subject to the enroll topic, key = subject id, through the idempotent
 * producer (bus/bus.h). The coordinator validates and re-keys them.
 *
 * Invariant: the command exits 0 only when every request it queued got a
 * successful delivery report; inputs are checked against the gallery's
 * definition (dimension, geometry) before anything is sent. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "biomatch.pb-c.h"
#include "cli.h"
#include "common/clock.h"
#include "conf/policy.h"
#include "conf/topics.h"
#include "irisfile.h"
#include "npy.h"
#include "store/galdef.h"
#include "store/subjects.h"

#define FLUSH_TIMEOUT_MS 120000
#define CONTENT_TYPE "application/x-protobuf; proto=biomatch.v1.EnrollRequest"

struct deliveries {
    uint64_t ok, failed;
    int64_t last_ms;
    char first_error[256];
};

static void on_delivery(const struct bm_delivery *d, void *opaque)
{
    struct deliveries *dl = opaque;
    if (d->err == BM_OK) {
        dl->ok++;
    } else {
        if (dl->failed == 0)
            snprintf(dl->first_error, sizeof dl->first_error, "%s", d->errstr);
        dl->failed++;
    }
    dl->last_ms = bm_wall_ms();
}

/* The ids file: one id per line (1..128 bytes, no NUL), '\n' or "\r\n"
 * line ends; a final newline is optional. The array points into *buf. */
static int read_ids(const char *path, char **buf, char ***ids, size_t **lens, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "biomatch: %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 1 << 16, len = 0;
    char *b = malloc(cap);
    while (b != NULL) {
        size_t got = fread(b + len, 1, cap - len, f);
        len += got;
        if (len < cap)
            break;
        char *nb = cap > ((size_t)1 << 32) ? NULL : realloc(b, cap * 2);
        if (nb == NULL) {
            free(b);
            b = NULL;
            break;
        }
        b = nb;
        cap *= 2;
    }
    fclose(f);
    if (b == NULL) {
        fprintf(stderr, "biomatch: %s: out of memory or too large\n", path);
        return -1;
    }
    size_t lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += b[i] == '\n';
    lines++;
    char **v = malloc(lines * sizeof *v);
    size_t *l = malloc(lines * sizeof *l);
    if (v == NULL || l == NULL) {
        free(b);
        free(v);
        free(l);
        fprintf(stderr, "biomatch: out of memory\n");
        return -1;
    }
    size_t k = 0, start = 0, lineno = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && b[i] != '\n')
            continue;
        lineno++;
        size_t e = i;
        if (e > start && b[e - 1] == '\r')
            e--;
        if (i == len && e == start)
            break;   /* no final newline, or nothing after it */
        size_t idl = e - start;
        if (idl == 0 || idl > BM_SUBJECT_ID_MAX || memchr(b + start, '\0', idl) != NULL) {
            fprintf(stderr, "biomatch: %s:%zu: a subject id must be 1..%d bytes without NUL\n", path,
                    lineno, BM_SUBJECT_ID_MAX);
            free(b);
            free(v);
            free(l);
            return -1;
        }
        v[k] = b + start;
        l[k] = idl;
        k++;
        start = i + 1;
    }
    *buf = b;
    *ids = v;
    *lens = l;
    *n = k;
    return 0;
}

int cli_enroll(int argc, char **argv)
{
    struct cli_common c = { 0 };
    const char *gallery = NULL, *idsf = NULL, *npyf = NULL, *irisf = NULL, *del = NULL;
    const char *agency = "cli", *reply = NULL, *reqprefix = NULL, *json = NULL, *quiet = NULL;
    const char *signkey = NULL, *keyid = NULL;
    const char *pos[1];
    size_t npos = 0;
    const struct bm_opt opts[] = {
        CLI_COMMON_OPTS(&c),
        { "--gallery", "NAME", &gallery, "target gallery (required; its definition is read from Redis)" },
        { "--ids", "FILE", &idsf, "subject ids, one per line (required)" },
        { "--npy", "FILE", &npyf, "dense templates: float32 .npy, one row per id" },
        { "--iris", "FILE", &irisf, "iris templates: iris file (docs/formats.md), one record per id" },
        { "--delete", NULL, &del, "send OP_DELETE for every id instead of upserts" },
        { "--agency", "NAME", &agency, "agency named in the requests (default \"cli\")" },
        { "--reply-topic", "TOPIC", &reply, "where the coordinator sends rejections (default dlq)" },
        { "--request-prefix", "P", &reqprefix, "request ids are P-<line> (default cli-<pid>-<ms>)" },
        { "--json", NULL, &json, "print a JSON summary as the last line" },
        { "--quiet", NULL, &quiet, "no progress lines" },
        { "--sign-key", "FILE", &signkey, "sign each request with this Ed25519 private key (PEM)" },
        { "--key-id", "ID", &keyid, "the key's id in the policy file (with --sign-key)" },
    };
    int p = cli_parse(argc, argv, 1, opts, sizeof opts / sizeof opts[0], pos, 0, &npos,
                      "biomatch enroll --gallery NAME --ids FILE (--npy FILE | --iris FILE | --delete)",
                      "Produce one EnrollRequest per subject id to the enroll topic (key = subject\n"
                      "id, idempotent producer). Dense rows are sent as f32 DenseEmbedding; the\n"
                      "coordinator normalises and stores them in the gallery's format. Exits\n"
                      "non-zero unless every request was delivered.");
    if (p != 0)
        return p > 0 ? 0 : 2;
    if (gallery == NULL || idsf == NULL || (!!npyf + !!irisf + !!del) != 1) {
        fprintf(stderr, "biomatch: enroll needs --gallery, --ids and exactly one of --npy, --iris, "
                        "--delete\n");
        return 2;
    }
    if (!!signkey != !!keyid) {
        fprintf(stderr, "biomatch: --sign-key and --key-id go together\n");
        return 2;
    }
    char err[512], reqbuf[64];
    int ret = 1;
    char *idbuf = NULL, **ids = NULL;
    size_t *lens = NULL, n = 0;
    struct bm_npy m = { 0 };
    struct bm_irisfile irs = { 0 };
    struct bm_redis *rd = NULL;
    struct bm_producer *pr = NULL;
    struct bm_bus_prop *props = NULL;
    Biomatch__V1__GalleryDefinition *def = NULL;
    struct deliveries dl = { 0 };
    uint8_t *pack = NULL;
    struct bm_signer *signer = NULL;
    if (cli_conf_load(&c) != 0)
        return 2;
    if (signkey != NULL && (signer = bm_signer_load(signkey, keyid, err, sizeof err)) == NULL) {
        fprintf(stderr, "biomatch: --sign-key: %s\n", err);
        goto out;
    }
    if (read_ids(idsf, &idbuf, &ids, &lens, &n) != 0)
        goto out;
    rd = cli_redis(&c);
    if (rd == NULL)
        goto out;
    int rc;
    def = bm_galdef_get(rd, gallery, &rc, err, sizeof err);
    bm_redis_close(rd);
    rd = NULL;
    if (def == NULL) {
        fprintf(stderr, "biomatch: %s\n", err);
        goto out;
    }
    struct bm_spec spec;
    if (bm_galdef_to_spec(def, &spec, err, sizeof err) != BM_OK) {
        fprintf(stderr, "biomatch: %s\n", err);
        goto out;
    }
    if (npyf != NULL) {
        if (spec.modality != BM_MODALITY_DENSE) {
            fprintf(stderr, "biomatch: gallery %s is iris; use --iris\n", gallery);
            goto out;
        }
        if (bm_npy_read(npyf, &m, err, sizeof err) != BM_OK) {
            fprintf(stderr, "biomatch: %s\n", err);
            goto out;
        }
        if (m.cols != spec.dim || m.rows != n) {
            fprintf(stderr, "biomatch: %s is %llu x %llu; need %zu rows (ids) x %u (gallery dim)\n",
                    npyf, (unsigned long long)m.rows, (unsigned long long)m.cols, n, spec.dim);
            goto out;
        }
    } else if (irisf != NULL) {
        if (spec.modality != BM_MODALITY_IRIS) {
            fprintf(stderr, "biomatch: gallery %s is dense; use --npy\n", gallery);
            goto out;
        }
        if (bm_irisfile_read(irisf, &irs, err, sizeof err) != BM_OK) {
            fprintf(stderr, "biomatch: %s\n", err);
            goto out;
        }
        if (irs.filters != spec.iris_filters || irs.rows != spec.iris_rows ||
            irs.columns != spec.iris_columns || irs.bits_per_cell != spec.iris_bits_per_cell ||
            irs.count != n) {
            fprintf(stderr, "biomatch: %s holds %u codes of %ux%ux%ux%u; need %zu of the gallery's "
                            "%ux%ux%ux%u\n", irisf, irs.count, irs.filters, irs.rows, irs.columns,
                    irs.bits_per_cell, n, spec.iris_filters, spec.iris_rows, spec.iris_columns,
                    spec.iris_bits_per_cell);
            goto out;
        }
    }
    char topic[BM_TOPIC_MAX];
    if (bm_topic_name(topic, sizeof topic, cli_prefix(&c), BM_TOPIC_ENROLL) != 0)
        goto out;
    struct bm_bus_conf bc;
    props = calloc(c.conf->kafka_n + 1, sizeof *props);
    if (props == NULL || cli_bus_conf(&c, &bc, props) != 0)
        goto out;
    pr = bm_producer_new(&bc, err, sizeof err);
    if (pr == NULL) {
        fprintf(stderr, "biomatch: producer: %s\n", err);
        goto out;
    }
    if (reqprefix == NULL) {
        snprintf(reqbuf, sizeof reqbuf, "cli-%ld-%lld", (long)getpid(), (long long)bm_wall_ms());
        reqprefix = reqbuf;
    }
    size_t packcap = 4096;
    pack = malloc(packcap);
    if (pack == NULL)
        goto out;
    struct bm_bus_headers hdrs;
    bm_bus_headers_init(&hdrs);
    bm_bus_headers_add_str(&hdrs, "content-type", CONTENT_TYPE);
    int64_t first_ms = bm_wall_ms(), last_report = first_ms;
    uint64_t sent = 0;
    for (size_t i = 0; i < n; i++) {
        char subject[BM_SUBJECT_ID_MAX + 1], reqid[128];
        memcpy(subject, ids[i], lens[i]);
        subject[lens[i]] = '\0';
        snprintf(reqid, sizeof reqid, "%s-%zu", reqprefix, i + 1);
        Biomatch__V1__EnrollRequest req = BIOMATCH__V1__ENROLL_REQUEST__INIT;
        Biomatch__V1__Template tpl = BIOMATCH__V1__TEMPLATE__INIT;
        Biomatch__V1__DenseEmbedding de = BIOMATCH__V1__DENSE_EMBEDDING__INIT;
        Biomatch__V1__IrisCode ic = BIOMATCH__V1__IRIS_CODE__INIT;
        Biomatch__V1__IrisGeometry ig = BIOMATCH__V1__IRIS_GEOMETRY__INIT;
        req.request_id = reqid;
        req.agency = (char *)agency;
        req.gallery = (char *)gallery;
        req.subject_id = subject;
        req.reply_topic = (char *)(reply ? reply : "");
        req.submitted_unix_ms = bm_wall_ms();
        if (del != NULL) {
            req.op = BIOMATCH__V1__ENROLL_REQUEST__OP__OP_DELETE;
        } else {
            req.op = BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT;
            tpl.modality = def->modality;
            if (npyf != NULL) {
                de.dim = (uint32_t)m.cols;
                de.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32;
                /* .npy '<f4' bytes are exactly DenseEmbedding's F32 bytes. */
                de.data.data = (uint8_t *)(m.data + (size_t)i * m.cols * 4);
                de.data.len = (size_t)m.cols * 4;
                tpl.kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
                tpl.dense = &de;
            } else {
                ig.filters = irs.filters;
                ig.rows = irs.rows;
                ig.columns = irs.columns;
                ig.bits_per_cell = irs.bits_per_cell;
                ic.geometry = &ig;
                ic.code.data = (uint8_t *)bm_irisfile_code(&irs, (uint32_t)i);
                ic.code.len = irs.code_bytes;
                ic.mask.data = (uint8_t *)bm_irisfile_mask(&irs, (uint32_t)i);
                ic.mask.len = irs.code_bytes;
                tpl.kind_case = BIOMATCH__V1__TEMPLATE__KIND_IRIS;
                tpl.iris = &ic;
            }
            req.template_ = &tpl;
        }
        size_t need = biomatch__v1__enroll_request__get_packed_size(&req);
        if (need > packcap) {
            uint8_t *np = realloc(pack, need);
            if (np == NULL)
                goto out;
            pack = np;
            packcap = need;
        }
        size_t plen = biomatch__v1__enroll_request__pack(&req, pack);
        /* The signature covers the record exactly as sent (docs/wire.md). */
        struct bm_bus_headers h = hdrs;
        char sig[BM_POLICY_SIG_MAX];
        if (signer != NULL) {
            struct bm_sig_record sr = {biomatch__v1__enroll_request__descriptor.name,
                                       topic, subject, lens[i], pack, plen, req.agency,
                                       req.request_id};
            if (bm_signer_sign_record(signer, &sr, bm_wall_ms(), sig, sizeof sig, err,
                                      sizeof err) != BM_OK) {
                fprintf(stderr, "biomatch: sign %s: %s\n", reqid, err);
                break;
            }
            bm_bus_headers_add_str(&h, BM_POLICY_SIG_HEADER, sig);
        }
        rc = bm_producer_send_wait(pr, topic, BM_PARTITION_ANY, subject, lens[i], pack, plen,
                                   h.v, h.n, BM_SEND_SERVE, on_delivery, &dl);
        if (rc != BM_OK) {
            fprintf(stderr, "biomatch: send %s: %s\n", reqid, bm_strerror(rc));
            break;
        }
        sent++;
        bm_producer_poll(pr, 0);
        int64_t t = bm_wall_ms();
        if (!quiet && t - last_report >= 2000) {
            fprintf(stderr, "enroll: %llu/%zu sent, %llu delivered, %llu failed\n",
                    (unsigned long long)sent, n, (unsigned long long)dl.ok,
                    (unsigned long long)dl.failed);
            last_report = t;
        }
    }
    if (bm_producer_flush(pr, FLUSH_TIMEOUT_MS) != BM_OK)
        fprintf(stderr, "biomatch: %d request(s) still undelivered after %d s\n",
                bm_producer_outstanding(pr), FLUSH_TIMEOUT_MS / 1000);
    int64_t end_ms = bm_wall_ms();
    double secs = (double)(end_ms - first_ms) / 1e3;
    fprintf(stderr, "enroll: %llu of %zu sent to %s, %llu delivered, %llu failed, %.2f s (%.0f/s)\n",
            (unsigned long long)sent, n, topic, (unsigned long long)dl.ok,
            (unsigned long long)dl.failed, secs, secs > 0 ? (double)dl.ok / secs : 0);
    if (dl.failed > 0)
        fprintf(stderr, "biomatch: first delivery failure: %s\n", dl.first_error);
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "requests", (double)n);
        cJSON_AddNumberToObject(o, "sent", (double)sent);
        cJSON_AddNumberToObject(o, "delivered", (double)dl.ok);
        cJSON_AddNumberToObject(o, "failed", (double)dl.failed);
        cJSON_AddNumberToObject(o, "first_send_unix_ms", (double)first_ms);
        cJSON_AddNumberToObject(o, "last_delivery_unix_ms", (double)dl.last_ms);
        char *s = cJSON_PrintUnformatted(o);
        if (s != NULL)
            printf("%s\n", s);
        free(s);
        cJSON_Delete(o);
    }
    ret = (sent == n && dl.ok == n && dl.failed == 0) ? 0 : 1;
out:
    bm_producer_free(pr);
    bm_signer_destroy(signer);
    free(props);
    free(pack);
    bm_galdef_free(def);
    bm_redis_close(rd);
    bm_npy_free(&m);
    bm_irisfile_free(&irs);
    free(idbuf);
    free(ids);
    free(lens);
    cli_conf_free(&c);
    return ret;
}
