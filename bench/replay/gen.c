/* `biomatch-replay gen`: a synthetic replay file of face IDENTIFY jobs whose
 * mates are known, built from the probe files `biomatch gen` writes
 * (DIR/probes.npy and DIR/probes.truth, docs/formats.md).
 *
 * Each job carries one probe; a fraction --mated of the jobs use probes whose
 * truth line names a mate, the rest probes marked '-' (no mate enrolled).
 * The expected rank-1 subject (or "-") goes into the record's 'expect'
 * field, so `run` can report rank-1 accuracy and false matches. Jobs are
 * spaced evenly at --rate per second in the file; `run --rate` may
 * reschedule them. The choice is seeded, so the same flags write the same
 * file. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "npy.h"
#include "synth.h"
#include "replay.h"
#include "replayfile.h"
#include "common/clock.h"
#include "wire/decode.h"
#include "wire/headers.h"

/* Read the truth file: 'rows' lines "<index>\t<mate or ->" in index order.
 * mates[i] is a malloc'd id or NULL for '-'. 0 or -1 (printed). */
static int read_truth(const char *path, uint64_t rows, char ***mates)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "biomatch-replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char **m = calloc(rows ? rows : 1, sizeof *m);
    char line[512];
    uint64_t i = 0;
    int ok = m != NULL;
    while (ok && fgets(line, sizeof line, f) != NULL) {
        char *tab = strchr(line, '\t');
        size_t l = strlen(line);
        if (l && line[l - 1] == '\n')
            line[--l] = '\0';
        char *e;
        errno = 0;
        unsigned long long idx = tab ? strtoull(line, &e, 10) : 0;
        if (tab == NULL || errno || e != tab || idx != i || i >= rows || tab[1] == '\0') {
            fprintf(stderr, "biomatch-replay: %s:%llu: expected '%llu<TAB>mate-or--'\n", path,
                    (unsigned long long)i + 1, (unsigned long long)i);
            ok = 0;
            break;
        }
        if (strcmp(tab + 1, "-") != 0 && (m[i] = strdup(tab + 1)) == NULL)
            ok = 0;
        i++;
    }
    fclose(f);
    if (ok && i != rows) {
        fprintf(stderr, "biomatch-replay: %s has %llu lines for %llu probes\n", path,
                (unsigned long long)i, (unsigned long long)rows);
        ok = 0;
    }
    if (!ok) {
        for (uint64_t j = 0; m && j < rows; j++)
            free(m[j]);
        free(m);
        return -1;
    }
    *mates = m;
    return 0;
}

int rp_gen(int argc, char **argv)
{
    const char *gallery = NULL, *jobs_s = "1000", *mated_s = "0.5", *out = NULL, *npy_s = NULL;
    const char *truth_s = NULL, *dir = NULL, *rate_s = "100", *topk_s = "10", *thr_s = NULL;
    const char *agency = "bench", *seed_s = "1", *deadline_s = "0";
    const char *pos[1];
    size_t npos;
    const struct bm_opt opts[] = {
        { "--gallery", "NAME", &gallery, "gallery the jobs search (required)" },
        { "--jobs", "N", &jobs_s, "number of jobs (default 1000)" },
        { "--mated", "F", &mated_s, "fraction of jobs whose probe has a mate (default 0.5)" },
        { "--out", "FILE", &out, "replay file to write (required)" },
        { "--dir", "DIR", &dir, "directory of `biomatch gen` (DIR/probes.npy, DIR/probes.truth)" },
        { "--npy", "FILE", &npy_s, "probe vectors (float32 .npy, one row per probe)" },
        { "--truth", "FILE", &truth_s, "probe truth (index TAB mate-or--)" },
        { "--rate", "R", &rate_s, "jobs per second in the file's schedule (default 100)" },
        { "--top-k", "K", &topk_s, "candidates per job (default 10)" },
        { "--threshold", "T", &thr_s, "similarity floor carried in each job (default none)" },
        { "--agency", "NAME", &agency, "submitting agency (default bench)" },
        { "--deadline-ms", "MS", &deadline_s, "job deadline budget; 0 = coordinator default" },
        { "--seed", "S", &seed_s, "seed of the mated/non-mated choice (default 1)" },
    };
    int p = rp_parse(argc, argv, opts, sizeof opts / sizeof opts[0], pos, 0, &npos,
                     "biomatch-replay gen --gallery NAME --jobs N --mated F --out FILE "
                     "(--dir DIR | --npy FILE --truth FILE)");
    if (p)
        return p > 0 ? 0 : 2;
    char npy_path[4096], truth_path[4096], err[512];
    if (gallery == NULL || out == NULL || (dir == NULL && (npy_s == NULL || truth_s == NULL))) {
        fprintf(stderr, "biomatch-replay: gen needs --gallery, --out and --dir or --npy + --truth\n");
        return 2;
    }
    snprintf(npy_path, sizeof npy_path, "%s", npy_s ? npy_s : "");
    snprintf(truth_path, sizeof truth_path, "%s", truth_s ? truth_s : "");
    if (npy_s == NULL)
        snprintf(npy_path, sizeof npy_path, "%s/probes.npy", dir);
    if (truth_s == NULL)
        snprintf(truth_path, sizeof truth_path, "%s/probes.truth", dir);
    uint64_t njobs, topk, seed, deadline;
    double mated, rate, thr = 0;
    if (rp_u64("--jobs", jobs_s, 1, BM_REPLAY_MAX_RECORDS, &njobs) ||
        rp_double("--mated", mated_s, 0, 1, &mated) || rp_double("--rate", rate_s, 0.001, 1e7, &rate) ||
        rp_u64("--top-k", topk_s, 1, 1000, &topk) || rp_u64("--seed", seed_s, 0, UINT64_MAX, &seed) ||
        rp_u64("--deadline-ms", deadline_s, 0, 86400000, &deadline) ||
        (thr_s && rp_double("--threshold", thr_s, -1, 1, &thr)))
        return 2;

    struct bm_npy m;
    if (bm_npy_read(npy_path, &m, err, sizeof err) != BM_OK) {
        fprintf(stderr, "biomatch-replay: %s\n", err);
        return 1;
    }
    char **mates = NULL;
    int ret = 1;
    size_t *mi = NULL, *ni = NULL, nm = 0, nn = 0;
    float *vec = NULL;
    struct bm_replay_writer *w = NULL;
    if (read_truth(truth_path, m.rows, &mates) != 0)
        goto out;
    mi = malloc(m.rows * sizeof *mi);
    ni = malloc(m.rows * sizeof *ni);
    vec = malloc(m.cols * sizeof *vec);
    if (mi == NULL || ni == NULL || vec == NULL || m.rows == 0) {
        fprintf(stderr, "biomatch-replay: %s\n", m.rows ? "out of memory" : "no probes");
        goto out;
    }
    for (uint64_t i = 0; i < m.rows; i++) {
        if (mates[i])
            mi[nm++] = i;
        else
            ni[nn++] = i;
    }
    w = bm_replay_writer_open(out, "jobs", bm_wall_ms(), err, sizeof err);
    if (w == NULL) {
        fprintf(stderr, "biomatch-replay: %s\n", err);
        goto out;
    }
    char ct[128];
    bm_wire_content_type(&biomatch__v1__match_job__descriptor, ct, sizeof ct);
    struct bm_synth rng = {seed};
    uint64_t mated_jobs = 0;
    size_t cm = 0, cn = 0;
    for (uint64_t j = 0; j < njobs; j++) {
        int want_mate = bm_synth_uniform(&rng) < mated;
        if (nm == 0)
            want_mate = 0;
        if (nn == 0)
            want_mate = 1;
        size_t row = want_mate ? mi[cm++ % nm] : ni[cn++ % nn];
        mated_jobs += (uint64_t)want_mate;
        bm_npy_row(&m, row, vec);
        char id[64];
        snprintf(id, sizeof id, "gen-%08llu", (unsigned long long)j);
        Biomatch__V1__DenseEmbedding d = BIOMATCH__V1__DENSE_EMBEDDING__INIT;
        d.dim = (uint32_t)m.cols;
        d.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32;
        d.data.data = (uint8_t *)vec;
        d.data.len = m.cols * sizeof *vec;
        Biomatch__V1__Template t = BIOMATCH__V1__TEMPLATE__INIT;
        t.modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
        t.kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
        t.dense = &d;
        Biomatch__V1__Template *tp = &t;
        Biomatch__V1__MatchJob job = BIOMATCH__V1__MATCH_JOB__INIT;
        job.job_id = id;
        job.agency = (char *)agency;
        job.gallery = (char *)gallery;
        job.mode = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY;
        job.n_probes = 1;
        job.probes = &tp;
        job.top_k = (uint32_t)topk;
        job.has_threshold = thr_s != NULL;
        job.threshold = (float)thr;
        /* The budget travels as deadline - submitted; run re-bases both. */
        job.submitted_unix_ms = 1;
        job.deadline_unix_ms = deadline ? 1 + (int64_t)deadline : 0;
        size_t len;
        uint8_t *buf = bm_wire_encode(&job.base, &len);
        if (buf == NULL) {
            fprintf(stderr, "biomatch-replay: out of memory\n");
            goto out;
        }
        struct bm_replay_hdr h = { BM_HDR_CONTENT_TYPE, (const uint8_t *)ct, strlen(ct) };
        struct bm_replay_record r = {
            .t_us = (uint64_t)((double)j * 1e6 / rate),
            .key = (const uint8_t *)id, .keylen = strlen(id),
            .value = buf, .valuelen = len, .headers = &h, .nheaders = 1,
            .expect = want_mate ? mates[row] : "-",
        };
        int rc = bm_replay_writer_add(w, &r, err, sizeof err);
        free(buf);
        if (rc != BM_OK) {
            fprintf(stderr, "biomatch-replay: %s\n", err);
            goto out;
        }
    }
    int rc = bm_replay_writer_close(w, err, sizeof err);
    w = NULL;
    if (rc != BM_OK) {
        fprintf(stderr, "biomatch-replay: %s\n", err);
        goto out;
    }
    fprintf(stderr, "biomatch-replay: wrote %llu jobs (%llu mated) for gallery %s to %s\n",
            (unsigned long long)njobs, (unsigned long long)mated_jobs, gallery, out);
    ret = 0;
out:
    bm_replay_writer_free(w);
    for (uint64_t i = 0; mates && i < m.rows; i++)
        free(mates[i]);
    free(mates);
    free(mi);
    free(ni);
    free(vec);
    bm_npy_free(&m);
    return ret;
}
