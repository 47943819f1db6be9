/* biomatch-bench: the matcher benchmark (issue 3). Generates a seeded
 * synthetic gallery with known mates, measures the machine's limits (memory
 * read bandwidth, iris popcount throughput) and FAISS IndexFlatIP on the same
 * data in the same run, then sweeps modality x format x SIMD level x batch x
 * threads and prints a table or one JSON object (--json).
 *
 * Invariant: stdout carries only the report (exactly one JSON object with
 * --json); progress and diagnostics go to stderr. See docs/benchmarks.md. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "hw.h"
#include "par.h"
#include "common/clock.h"

#ifndef BB_SOURCE_DIR
#define BB_SOURCE_DIR "bench"
#endif
#ifndef BB_DEFAULT_PYTHON
#define BB_DEFAULT_PYTHON "python3"
#endif

static void usage(FILE *f)
{
    fputs("usage: biomatch-bench [options]\n"
          "  --json               print one JSON object instead of a table\n"
          "  --quick              tiny sizes, one repetition (seconds; for tests)\n"
          "  --gallery N          templates (default 1000000 dense, 100000 iris)\n"
          "  --iris-gallery N     iris templates only (overrides --gallery for iris)\n"
          "  --scalar-gallery N   templates scanned by scalar rows (default gallery/40\n"
          "                       dense, gallery/500 iris)\n"
          "  --dim D              dense dimension (default 512)\n"
          "  --modality LIST      dense,iris (default both)\n"
          "  --format LIST        int8,f16,f32 (default all)\n"
          "  --simd LIST          scalar,avx2,avx512 (default all the CPU has)\n"
          "  --threads LIST       thread counts, 'all' = every core (default 1,all)\n"
          "  --batch LIST         probes per search call (default 1,8,64)\n"
          "  --seed S             data seed (default 42)\n"
          "  --python PATH        interpreter for the FAISS peer (default $BIOMATCH_PYTHON,\n"
          "                       else the build's BM_PYTHON, else python3)\n"
          "  --faiss-script PATH  the peer script (default bench/faiss_peer.py)\n"
          "  --no-faiss           skip the FAISS peer\n"
          "  --workdir DIR        where the .npy files go (default $TMPDIR or /tmp)\n"
          "  --keep-data          keep the .npy files\n"
          "  --reps N             repetitions per row, best kept (default 3)\n"
          "  --min-time S         seconds per repetition (default 0.3)\n"
          "  --quiet              no progress on stderr\n",
          f);
}

static int parse_size(const char *s, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || v == 0)
        return -1;
    *out = (size_t)v;
    return 0;
}

/* Parse a comma-separated list of positive numbers ('all' gives 0). */
static int parse_uints(const char *s, unsigned *out, size_t *n, int allow_all)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    *n = 0;
    char *p = buf;
    while (*p) {
        char *comma = strchr(p, ',');
        if (comma)
            *comma = '\0';
        size_t v;
        if (allow_all && strcmp(p, "all") == 0)
            v = 0;
        else if (parse_size(p, &v) != 0 || v > 1u << 20)
            return -1;
        if (*n >= BB_MAX_LIST)
            return -1;
        out[(*n)++] = (unsigned)v;
        if (!comma)
            break;
        p = comma + 1;
    }
    return *n ? 0 : -1;
}

static int parse_names(const char *s, const char *const *names, int *flags, size_t count)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    memset(flags, 0, count * sizeof *flags);
    for (char *p = buf; p && *p;) {
        char *comma = strchr(p, ',');
        if (comma)
            *comma = '\0';
        size_t i;
        for (i = 0; i < count && strcmp(p, names[i]) != 0; i++) {
        }
        if (i == count)
            return -1;
        flags[i] = 1;
        p = comma ? comma + 1 : NULL;
    }
    return 0;
}

static int parse_args(struct bb_opts *o, int argc, char **argv)
{
    static const char *const modalities[] = {"dense", "iris"};
    static const char *const fmts[] = {"int8", "f16", "f32"};
    static const char *const simds[] = {"scalar", "avx2", "avx512"};
    int mods[2] = {1, 1};
    size_t gallery = 0;
    const char *env = getenv("BIOMATCH_PYTHON");
    const char *tmp = getenv("TMPDIR");

    memset(o, 0, sizeof *o);
    for (int i = 0; i < 3; i++)
        o->formats[i] = o->simd[i] = 1;
    o->threads[0] = 1;
    o->threads[1] = 0;
    o->nthreads = 2;
    o->batches[0] = 1;
    o->batches[1] = 8;
    o->batches[2] = 64;
    o->nbatches = 3;
    o->seed = 42;
    o->python = env && env[0] ? env : BB_DEFAULT_PYTHON;
    o->faiss_script = BB_SOURCE_DIR "/faiss_peer.py";
    o->workdir = tmp && tmp[0] ? tmp : "/tmp";
    o->reps = -1;
    o->min_time = -1;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0, used = 1;
        size_t sz;
        if (strcmp(a, "--json") == 0) {
            o->json = 1;
            used = 0;
        } else if (strcmp(a, "--quick") == 0) {
            o->quick = 1;
            used = 0;
        } else if (strcmp(a, "--quiet") == 0) {
            o->quiet = 1;
            used = 0;
        } else if (strcmp(a, "--keep-data") == 0) {
            o->keep_data = 1;
            used = 0;
        } else if (strcmp(a, "--no-faiss") == 0) {
            o->no_faiss = 1;
            used = 0;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            exit(0);
        } else if (!v) {
            bad = 1;
        } else if (strcmp(a, "--gallery") == 0) {
            bad = parse_size(v, &gallery);
        } else if (strcmp(a, "--iris-gallery") == 0) {
            bad = parse_size(v, &o->iris_gallery);
        } else if (strcmp(a, "--scalar-gallery") == 0) {
            bad = parse_size(v, &o->scalar_gallery);
        } else if (strcmp(a, "--dim") == 0) {
            bad = parse_size(v, &sz) || sz > 4096;
            o->dim = (unsigned)sz;
        } else if (strcmp(a, "--modality") == 0) {
            bad = parse_names(v, modalities, mods, 2);
        } else if (strcmp(a, "--format") == 0) {
            bad = parse_names(v, fmts, o->formats, 3);
        } else if (strcmp(a, "--simd") == 0) {
            bad = parse_names(v, simds, o->simd, 3);
        } else if (strcmp(a, "--threads") == 0) {
            bad = parse_uints(v, o->threads, &o->nthreads, 1);
        } else if (strcmp(a, "--batch") == 0) {
            bad = parse_uints(v, o->batches, &o->nbatches, 0);
        } else if (strcmp(a, "--seed") == 0) {
            char *end;
            errno = 0;
            o->seed = strtoull(v, &end, 0);
            bad = errno || end == v || *end;
        } else if (strcmp(a, "--python") == 0) {
            o->python = v;
        } else if (strcmp(a, "--faiss-script") == 0) {
            o->faiss_script = v;
        } else if (strcmp(a, "--workdir") == 0) {
            o->workdir = v;
        } else if (strcmp(a, "--reps") == 0) {
            bad = parse_size(v, &sz) || sz > 1000;
            o->reps = (int)sz;
        } else if (strcmp(a, "--min-time") == 0) {
            char *end;
            o->min_time = strtod(v, &end);
            bad = end == v || *end || o->min_time < 0 || o->min_time > 60;
        } else {
            bad = 1;
        }
        if (bad) {
            fprintf(stderr, "biomatch-bench: bad or incomplete option '%s'\n", a);
            usage(stderr);
            return -1;
        }
        i += used;
    }
    o->dense = mods[0];
    o->iris = mods[1];
    if (!o->dim)
        o->dim = o->quick ? 128 : 512;
    if (!o->iris_gallery)
        o->iris_gallery = gallery ? gallery : o->quick ? 400 : 100000;
    o->gallery = gallery ? gallery : o->quick ? 2000 : 1000000;
    if (o->reps < 0)
        o->reps = o->quick ? 1 : 3;
    if (o->min_time < 0)
        o->min_time = o->quick ? 0 : 0.3;
    o->row_budget = o->quick ? 0 : 2.5;
    o->bw_bytes = o->quick ? (64u << 20) : (1u << 30);
    o->bw_runs = o->quick ? 1 : 8;
    return 0;
}

/* Resolve 'all', drop duplicates and sort, so the last entry is the largest
 * thread count (the all-cores figure of the machine block). */
static void resolve_threads(struct bb_opts *o, unsigned cores)
{
    unsigned out[BB_MAX_LIST];
    size_t n = 0;
    for (size_t i = 0; i < o->nthreads; i++) {
        unsigned t = o->threads[i] ? o->threads[i] : cores;
        size_t j = 0;
        while (j < n && out[j] < t)
            j++;
        if (j < n && out[j] == t)
            continue;
        memmove(out + j + 1, out + j, (n - j) * sizeof *out);
        out[j] = t;
        n++;
    }
    memcpy(o->threads, out, n * sizeof *out);
    o->nthreads = n;
}

static void cpu_name(char *buf, size_t len)
{
    char line[512];
    snprintf(buf, len, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0)
            continue;
        const char *colon = strchr(line, ':');
        if (!colon)
            break;
        colon++;
        while (*colon == ' ' || *colon == '\t')
            colon++;
        snprintf(buf, len, "%s", colon);
        buf[strcspn(buf, "\n")] = '\0';
        break;
    }
    fclose(f);
}

/* The 1-minute load average: other work on the machine skews every figure,
 * so the report records it. -1 when unknown. */
static double load_1m(void)
{
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &l) != 1)
            l = -1;
        fclose(f);
    }
    return l;
}

int main(int argc, char **argv)
{
    static struct bb_ctx c;
    double t0 = bm_mono_s();
    c.t0 = t0;
    c.m.loadavg[0] = load_1m();
    if (parse_args(&c.o, argc, argv) != 0)
        return 2;
    int cpu_rc = bm_cpu_init();
    if (cpu_rc != BM_OK)
        bb_note(&c, "bm_cpu_init: %s (BIOMATCH_SIMD ignored)", bm_strerror(cpu_rc));
    c.m.cores = bb_ncpus();
    resolve_threads(&c.o, c.m.cores);
    cpu_name(c.m.cpu, sizeof c.m.cpu);
    c.m.simd = bm_simd_name(bm_simd_detect());
    c.m.features = bm_cpu_features();
    for (int s = 0; s < 3; s++)
        if (c.o.simd[s] && (enum bm_simd)s > bm_simd_detect())
            bb_note(&c, "SIMD level %s skipped: not supported by this CPU",
                    bm_simd_name((enum bm_simd)s));

    for (size_t i = 0; i < c.o.nthreads; i++) {
        bb_progress(&c, "read bandwidth, %u thread(s), %zu MiB", c.o.threads[i],
                    c.o.bw_bytes >> 20);
        c.m.bw_gbs[i] = bb_read_bandwidth(c.o.bw_bytes, c.o.threads[i], c.o.bw_runs);
    }
    snprintf(c.peer.error, sizeof c.peer.error, "dense modality not selected");
    int rc = 0;
    if (c.o.dense && bb_run_dense(&c) != 0)
        rc = 1;
    if (rc == 0 && c.o.iris && bb_run_iris(&c) != 0)
        rc = 1;
    if (rc != 0)
        bb_note(&c, "the run stopped early on an error (see stderr)");
    bb_finish_fractions(&c);
    c.m.loadavg[1] = load_1m();
    for (int i = 0; i < 2; i++)
        if (c.m.loadavg[i] > (double)c.m.cores)
            bb_note(&c, "1-minute load %.2f exceeded the %u cores at the %s: other processes "
                        "competed for the CPU, so the figures are pessimistic and noisy",
                    c.m.loadavg[i], c.m.cores, i ? "end" : "start");
    double elapsed = bm_mono_s() - t0;
    if (c.o.json) {
        if (bb_report_json(&c, elapsed) != 0)
            rc = 1;
    } else {
        bb_report_table(&c, elapsed);
    }
    bb_peer_free(&c.peer);
    free(c.rows);
    return rc;
}
