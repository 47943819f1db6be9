/* `biomatch gen`: a seeded synthetic gallery and probe set with known mates.
 *
 * Dense: gallery rows are i.i.d. N(0, 1) vectors; a mated probe is its
 * mate's row plus N(0, noise^2) per element (cosine about
 * 1 / sqrt(1 + noise^2)), a non-mated probe is a fresh N(0, 1) vector.
 * Iris: codes are uniform random bits, masks valid except a few random
 * bits; a mated probe is its mate's code and mask rotated by a random shift
 * in -max_shift..+max_shift columns with a fraction 'flip' of the code bits
 * flipped. Everything comes from one splitmix64 stream seeded by --seed, so
 * the same flags always write the same bytes.
 *
 * Files (docs/formats.md): DIR/gallery.ids, DIR/gallery.npy or
 * DIR/gallery.iris, DIR/probes.npy or DIR/probes.iris, DIR/probes.truth
 * ("<probe index>\t<mate subject id or ->" per line, index from 0). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "irisfile.h"
#include "npy.h"
#include "synth.h"
#include "wire/template.h"

/* Whether the next probe is mated, 'left' probes (this one included) still
 * to go, so that exactly the requested number of probes are mated in the
 * end: selection sampling (mated with probability still-wanted / left),
 * which places them at random. */
static int pick_mated(struct bm_synth *r, uint32_t *wanted, uint32_t left)
{
    if (bm_synth_uniform(r) * left >= *wanted)
        return 0;
    (*wanted)--;
    return 1;
}

static int write_text(const char *path, const char *prefix, uint32_t count)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "biomatch: %s: %s\n", path, strerror(errno));
        return -1;
    }
    for (uint32_t i = 0; i < count; i++)
        fprintf(f, "%s%08u\n", prefix, i);
    if (fclose(f) != 0) {
        fprintf(stderr, "biomatch: %s: write failed\n", path);
        return -1;
    }
    return 0;
}

static int get_bit(const uint8_t *p, size_t i)
{
    return (p[i / 8] >> (i % 8)) & 1;
}

static void set_bit(uint8_t *p, size_t i, int v)
{
    if (v)
        p[i / 8] |= (uint8_t)(1u << (i % 8));
    else
        p[i / 8] &= (uint8_t)~(1u << (i % 8));
}

/* out = in rotated by 's' columns (numpy roll: out column c = in column
 * (c - s) mod columns), bit layout of docs/internals/match.md. */
static void rotate(const uint8_t *in, uint8_t *out, uint32_t f, uint32_t rows, uint32_t cols,
                   uint32_t bits, int s)
{
    for (uint32_t a = 0; a < f * rows; a++)
        for (uint32_t c = 0; c < cols; c++) {
            uint32_t src = (uint32_t)(((int64_t)c - s % (int64_t)cols + cols) % cols);
            for (uint32_t b = 0; b < bits; b++)
                set_bit(out, ((size_t)a * cols + c) * bits + b,
                        get_bit(in, ((size_t)a * cols + src) * bits + b));
        }
}

int cli_gen(int argc, char **argv)
{
    const char *modality = "face", *count_s = "1000", *dim_s = "512", *probes_s = "100";
    const char *mated_s = "0.5", *seed_s = "1", *out = NULL, *noise_s = "0.5", *idp = "s";
    const char *filters_s = "2", *rows_s = "16", *cols_s = "256", *bits_s = "2";
    const char *flip_s = "0.1", *shift_s = "8", *invalid_s = "0.05";
    const char *pos[1];
    size_t npos = 0;
    const struct bm_opt opts[] = {
        { "--modality", "face|iris", &modality, "dense embeddings (face) or iris codes (default face)" },
        { "--count", "N", &count_s, "gallery subjects (default 1000)" },
        { "--dim", "D", &dim_s, "dense: dimension, 64..4096 as galleries take (default 512)" },
        { "--probes", "P", &probes_s, "probes (default 100)" },
        { "--mated", "F", &mated_s, "fraction of probes with a mate in the gallery, exact: round(F x probes) (default 0.5)" },
        { "--seed", "S", &seed_s, "random seed (default 1)" },
        { "--out", "DIR", &out, "output directory, created if missing (required)" },
        { "--noise", "SIGMA", &noise_s, "dense: mate noise per element (default 0.5)" },
        { "--id-prefix", "P", &idp, "subject ids are P%08u (default \"s\")" },
        { "--filters", "N", &filters_s, "iris: filters (default 2)" },
        { "--rows", "N", &rows_s, "iris: rows (default 16)" },
        { "--columns", "N", &cols_s, "iris: columns (default 256)" },
        { "--bits", "N", &bits_s, "iris: bits per cell (default 2)" },
        { "--flip", "F", &flip_s, "iris: fraction of mate code bits flipped (default 0.1)" },
        { "--max-shift", "N", &shift_s, "iris: mates rotated by -N..+N columns (default 8)" },
        { "--invalid", "F", &invalid_s, "iris: fraction of mask bits marked invalid (default 0.05)" },
    };
    int p = cli_parse(argc, argv, 1, opts, sizeof opts / sizeof opts[0], pos, 0, &npos,
                      "biomatch gen --out DIR [flags]",
                      "Write a seeded synthetic gallery (DIR/gallery.ids + gallery.npy or\n"
                      "gallery.iris), probes (DIR/probes.npy or probes.iris) and the ground\n"
                      "truth DIR/probes.truth (probe index, TAB, mate id or '-'). Same flags,\n"
                      "same bytes.");
    if (p != 0)
        return p > 0 ? 0 : 2;
    uint32_t count, dim = 0, probes, f = 0, rows = 0, cols = 0, bits = 0, maxshift = 0;
    uint64_t seed;
    double mated, noise, flip = 0, invalid = 0;
    int iris = strcmp(modality, "iris") == 0;
    if (!iris && strcmp(modality, "face") != 0) {
        fprintf(stderr, "biomatch: --modality must be face or iris\n");
        return 2;
    }
    if (out == NULL) {
        fprintf(stderr, "biomatch: gen needs --out DIR\n");
        return 2;
    }
    if (cli_u32("--count", count_s, 1, 50000000, &count) ||
        cli_u32("--probes", probes_s, 0, 10000000, &probes) ||
        cli_double("--mated", mated_s, 0, 1, &mated) || cli_u64("--seed", seed_s, &seed) ||
        cli_double("--noise", noise_s, 0, 100, &noise))
        return 2;
    if (iris) {
        if (cli_u32("--filters", filters_s, 1, 64, &f) || cli_u32("--rows", rows_s, 1, 1024, &rows) ||
            cli_u32("--columns", cols_s, 1, 4096, &cols) || cli_u32("--bits", bits_s, 1, 16, &bits) ||
            cli_double("--flip", flip_s, 0, 1, &flip) ||
            cli_u32("--max-shift", shift_s, 0, 2048, &maxshift) ||
            cli_double("--invalid", invalid_s, 0, 0.99, &invalid))
            return 2;
        if (bm_irisfile_code_bytes(f, rows, cols, bits) == 0) {
            fprintf(stderr, "biomatch: iris geometry %ux%ux%ux%u is invalid\n", f, rows, cols, bits);
            return 2;
        }
    } else if (cli_u32("--dim", dim_s, BM_WIRE_MIN_DIM, BM_WIRE_MAX_DIM, &dim)) {
        return 2;
    }
    if (mkdir(out, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "biomatch: %s: %s\n", out, strerror(errno));
        return 1;
    }
    char path[4096], err[512];
    struct bm_synth r = { seed };
    uint32_t wanted = (uint32_t)llround(mated * probes);
    int ret = 1;
    uint32_t *mate = malloc(((size_t)probes + 1) * sizeof *mate);
    float *g = NULL, *pv = NULL;
    uint8_t *gc = NULL, *gm = NULL, *pc = NULL, *pm = NULL;
    if (mate == NULL)
        goto oom;
    snprintf(path, sizeof path, "%s/gallery.ids", out);
    if (write_text(path, idp, count) != 0)
        goto out;
    if (!iris) {
        g = malloc((size_t)count * dim * sizeof *g);
        pv = malloc(((size_t)probes + 1) * dim * sizeof *pv);
        if (g == NULL || pv == NULL)
            goto oom;
        for (size_t i = 0; i < (size_t)count * dim; i++)
            g[i] = (float)bm_synth_normal(&r);
        for (uint32_t q = 0; q < probes; q++) {
            int is_mated = pick_mated(&r, &wanted, probes - q);
            mate[q] = is_mated ? (uint32_t)bm_synth_below(&r, count) : UINT32_MAX;
            for (uint32_t d = 0; d < dim; d++) {
                double base = is_mated ? g[(size_t)mate[q] * dim + d] : 0.0;
                double sd = is_mated ? noise : 1.0;
                pv[(size_t)q * dim + d] = (float)(base + sd * bm_synth_normal(&r));
            }
        }
        snprintf(path, sizeof path, "%s/gallery.npy", out);
        if (bm_npy_write(path, g, count, dim, err, sizeof err) != BM_OK)
            goto fail;
        snprintf(path, sizeof path, "%s/probes.npy", out);
        if (bm_npy_write(path, pv, probes, dim, err, sizeof err) != BM_OK)
            goto fail;
    } else {
        size_t cb = bm_irisfile_code_bytes(f, rows, cols, bits), nbits = cb * 8;
        gc = malloc((size_t)count * cb);
        gm = malloc((size_t)count * cb);
        pc = malloc(((size_t)probes + 1) * cb);
        pm = malloc(((size_t)probes + 1) * cb);
        uint8_t *tmp = malloc(cb);
        if (gc == NULL || gm == NULL || pc == NULL || pm == NULL || tmp == NULL) {
            free(tmp);
            goto oom;
        }
        for (size_t i = 0; i < (size_t)count; i++) {
            uint8_t *c = gc + i * cb, *m = gm + i * cb;
            for (size_t k = 0; k < cb; k++)
                c[k] = (uint8_t)bm_synth_next(&r);
            memset(m, 0xff, cb);
            for (size_t b = 0; b < nbits; b++)
                if (bm_synth_uniform(&r) < invalid)
                    set_bit(m, b, 0);
        }
        for (uint32_t q = 0; q < probes; q++) {
            uint8_t *c = pc + (size_t)q * cb, *m = pm + (size_t)q * cb;
            int is_mated = pick_mated(&r, &wanted, probes - q);
            mate[q] = is_mated ? (uint32_t)bm_synth_below(&r, count) : UINT32_MAX;
            if (is_mated) {
                int s = (int)bm_synth_below(&r, 2ull * maxshift + 1) - (int)maxshift;
                rotate(gc + (size_t)mate[q] * cb, c, f, rows, cols, bits, s);
                rotate(gm + (size_t)mate[q] * cb, m, f, rows, cols, bits, s);
                for (size_t b = 0; b < nbits; b++)
                    if (bm_synth_uniform(&r) < flip)
                        set_bit(c, b, !get_bit(c, b));
            } else {
                for (size_t k = 0; k < cb; k++)
                    c[k] = (uint8_t)bm_synth_next(&r);
                memset(m, 0xff, cb);
                for (size_t b = 0; b < nbits; b++)
                    if (bm_synth_uniform(&r) < invalid)
                        set_bit(m, b, 0);
            }
        }
        free(tmp);
        snprintf(path, sizeof path, "%s/gallery.iris", out);
        if (bm_irisfile_write(path, f, rows, cols, bits, count, gc, gm, err, sizeof err) != BM_OK)
            goto fail;
        snprintf(path, sizeof path, "%s/probes.iris", out);
        if (bm_irisfile_write(path, f, rows, cols, bits, probes, pc, pm, err, sizeof err) != BM_OK)
            goto fail;
    }
    snprintf(path, sizeof path, "%s/probes.truth", out);
    FILE *tf = fopen(path, "w");
    if (tf == NULL) {
        fprintf(stderr, "biomatch: %s: %s\n", path, strerror(errno));
        goto out;
    }
    uint32_t nm = 0;
    for (uint32_t q = 0; q < probes; q++) {
        if (mate[q] == UINT32_MAX) {
            fprintf(tf, "%u\t-\n", q);
        } else {
            fprintf(tf, "%u\t%s%08u\n", q, idp, mate[q]);
            nm++;
        }
    }
    if (fclose(tf) != 0) {
        fprintf(stderr, "biomatch: %s: write failed\n", path);
        goto out;
    }
    fprintf(stderr, "gen: %u %s subjects, %u probes (%u mated) in %s\n", count,
            iris ? "iris" : "dense", probes, nm, out);
    ret = 0;
    goto out;
oom:
    fprintf(stderr, "biomatch: out of memory\n");
    goto out;
fail:
    fprintf(stderr, "biomatch: %s\n", err);
out:
    free(mate);
    free(g);
    free(pv);
    free(gc);
    free(gm);
    free(pc);
    free(pm);
    return ret;
}
