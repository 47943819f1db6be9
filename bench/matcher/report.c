/* Output of biomatch-bench: one JSON object (--json), or a table for people.
 * Both carry the same figures; a negative figure means "not applicable or
 * not measured" and becomes JSON null or "-" in the table. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

static void add_num(cJSON *o, const char *key, double v)
{
    if (v < 0)
        cJSON_AddNullToObject(o, key);
    else
        cJSON_AddNumberToObject(o, key, v);
}

static void add_str(cJSON *o, const char *key, const char *v)
{
    if (v && v[0])
        cJSON_AddStringToObject(o, key, v);
    else
        cJSON_AddNullToObject(o, key);
}

static cJSON *machine_json(const struct bb_ctx *c)
{
    char key[16];
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "cpu", c->m.cpu);
    cJSON_AddNumberToObject(m, "cores", c->m.cores);
    /* The headline bandwidth is the all-cores figure (the last, largest
     * thread count); per-thread-count figures follow. */
    add_num(m, "read_bandwidth_gbs", c->m.bw_gbs[c->o.nthreads - 1]);
    cJSON_AddStringToObject(m, "simd", c->m.simd);
    add_str(m, "features", c->m.features);
    cJSON *bw = cJSON_AddObjectToObject(m, "read_bandwidth_gbs_by_threads");
    cJSON *pop = cJSON_AddObjectToObject(m, "popcount_limit_by_threads");
    for (size_t i = 0; i < c->o.nthreads; i++) {
        snprintf(key, sizeof key, "%u", c->o.threads[i]);
        add_num(bw, key, c->m.bw_gbs[i]);
        if (c->o.iris) {
            cJSON *p = cJSON_AddObjectToObject(pop, key);
            add_num(p, "template_shifts_per_s", c->m.pop_rate[i]);
            add_num(p, "gbs", c->m.pop_gbs[i]);
        }
    }
    add_str(m, "popcount_simd", c->o.iris ? c->m.pop_level : NULL);
    add_num(m, "loadavg_1m_start", c->m.loadavg[0]);
    add_num(m, "loadavg_1m_end", c->m.loadavg[1]);
    return m;
}

static cJSON *faiss_json(const struct bb_ctx *c)
{
    cJSON *f = cJSON_CreateObject();
    cJSON_AddBoolToObject(f, "available", c->peer_ok);
    add_str(f, "package", c->peer_ok ? "faiss-cpu (PyPI)" : NULL);
    add_str(f, "version", c->peer_ok ? c->peer.version : NULL);
    add_str(f, "simd", c->peer_ok ? c->peer.simd : NULL);
    add_str(f, "module", c->peer_ok ? c->peer.module : NULL);
    add_str(f, "compile_options", c->peer_ok ? c->peer.options : NULL);
    add_str(f, "error", c->peer_ok ? NULL : c->peer.error);
    return f;
}

static cJSON *row_json(const struct bb_row *r)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "modality", r->modality);
    cJSON_AddStringToObject(o, "format", r->format);
    cJSON_AddNumberToObject(o, "dim", (double)r->dim);
    cJSON_AddNumberToObject(o, "gallery", (double)r->gallery);
    cJSON_AddNumberToObject(o, "batch", r->batch);
    cJSON_AddNumberToObject(o, "threads", r->threads);
    cJSON_AddStringToObject(o, "simd", r->simd);
    add_num(o, "comparisons_per_s", r->comparisons_per_s);
    add_num(o, "bandwidth_fraction", r->bandwidth_fraction);
    add_num(o, "recall_at_10", r->recall_at_10);
    add_num(o, "faiss_comparisons_per_s", r->faiss_comparisons_per_s);
    add_num(o, "ratio_vs_faiss", r->ratio_vs_faiss);
    if (r->shifts >= 0) {
        add_num(o, "popcount_fraction", r->popcount_fraction);
        cJSON_AddNumberToObject(o, "shifts", r->shifts);
    }
    add_num(o, "mate_at_1", r->mate_at_1);
    return o;
}

int bb_report_json(const struct bb_ctx *c, double elapsed)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddItemToObject(root, "machine", machine_json(c));
    cJSON_AddItemToObject(root, "faiss", faiss_json(c));
    add_str(root, "recall_reference", c->recall_reference);
    cJSON *cfg = cJSON_AddObjectToObject(root, "config");
    cJSON_AddNumberToObject(cfg, "seed", (double)c->o.seed);
    cJSON_AddBoolToObject(cfg, "quick", c->o.quick);
    cJSON_AddNumberToObject(cfg, "min_time_s", c->o.min_time);
    cJSON_AddNumberToObject(cfg, "reps", c->o.reps);
    cJSON *rows = cJSON_AddArrayToObject(root, "results");
    for (size_t i = 0; i < c->nrows; i++)
        cJSON_AddItemToArray(rows, row_json(&c->rows[i]));
    cJSON *notes = cJSON_AddArrayToObject(root, "notes");
    for (size_t i = 0; i < c->nnotes; i++)
        cJSON_AddItemToArray(notes, cJSON_CreateString(c->notes[i]));
    cJSON_AddNumberToObject(root, "elapsed_s", elapsed);
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!text)
        return -1;
    puts(text);
    cJSON_free(text);
    return 0;
}

/* One table cell: '-' for an absent figure, else v * scale with 'prec'
 * significant digits (general) or decimals (fixed). */
static void cell(char *buf, size_t len, double v, int general, int prec, double scale)
{
    if (v < 0)
        snprintf(buf, len, "-");
    else if (general)
        snprintf(buf, len, "%.*g", prec, v * scale);
    else
        snprintf(buf, len, "%.*f", prec, v * scale);
}

void bb_report_table(const struct bb_ctx *c, double elapsed)
{
    printf("machine: %s, %u cores, SIMD %s\n", c->m.cpu, c->m.cores, c->m.simd);
    printf("  features: %s\n", c->m.features ? c->m.features : "?");
    printf("  1-minute load average: %.2f at start, %.2f at end (other work skews figures)\n",
           c->m.loadavg[0], c->m.loadavg[1]);
    for (size_t i = 0; i < c->o.nthreads; i++) {
        printf("  read bandwidth, %u thread(s): %.1f GB/s", c->o.threads[i], c->m.bw_gbs[i]);
        if (c->o.iris && c->m.pop_rate[i] > 0)
            printf("; iris popcount limit (%s): %.3g template-shifts/s = %.1f GB/s",
                   c->m.pop_level, c->m.pop_rate[i], c->m.pop_gbs[i]);
        putchar('\n');
    }
    if (c->peer_ok)
        printf("FAISS: faiss-cpu %s (PyPI), %s, module %s [%s]\n", c->peer.version,
               c->peer.simd, c->peer.module, c->peer.options);
    else if (c->o.dense)
        printf("FAISS: unavailable: %s\n", c->peer.error);
    printf("recall reference: %s\n\n",
           c->recall_reference ? c->recall_reference : "none");
    printf("%-5s %-4s %5s %8s %5s %3s %-6s %12s %6s %7s %12s %7s %6s %6s\n", "mod", "fmt",
           "dim", "gallery", "batch", "thr", "simd", "comps/s", "bw%", "rec@10", "faiss/s",
           "ratio", "pop%", "mate1");
    for (size_t i = 0; i < c->nrows; i++) {
        const struct bb_row *r = &c->rows[i];
        char cps[24], bw[16], rec[16], fs[24], ratio[16], pop[16], mate[16];
        cell(cps, sizeof cps, r->comparisons_per_s, 1, 4, 1);
        cell(bw, sizeof bw, r->bandwidth_fraction, 0, 1, 100);
        cell(rec, sizeof rec, r->recall_at_10, 0, 4, 1);
        cell(fs, sizeof fs, r->faiss_comparisons_per_s, 1, 4, 1);
        cell(ratio, sizeof ratio, r->ratio_vs_faiss, 0, 2, 1);
        cell(pop, sizeof pop, r->popcount_fraction, 0, 1, 100);
        cell(mate, sizeof mate, r->mate_at_1, 0, 2, 1);
        printf("%-5s %-4s %5zu %8zu %5u %3u %-6s %12s %6s %7s %12s %7s %6s %6s\n", r->modality,
               r->format, r->dim, r->gallery, r->batch, r->threads, r->simd, cps, bw, rec, fs,
               ratio, pop, mate);
    }
    for (size_t i = 0; i < c->nnotes; i++)
        printf("note: %s\n", c->notes[i]);
    printf("elapsed: %.1f s\n", elapsed);
}
