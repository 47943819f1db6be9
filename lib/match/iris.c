/* Iris codes: probe rotation into per-shift variants and the three scoring
 * rules (fractional HD, open-iris normalised HD, open-iris
 * HammingDistanceMatcher defaults). The derivations are in
 * docs/internals/match.md.
 *
 * Invariant: a probe is rotated once per search into nvar variants in the
 * gallery's bit layout, so scoring a gallery template is only AND/XOR/
 * popcount over flat byte streams; the gallery itself is never rotated. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "match/internal.h"

#define OI_MEAN 0.45
#define OI_GRADIENT 0.00005

static inline int get_bit(const uint8_t *p, size_t i)
{
    return (p[i >> 3] >> (i & 7)) & 1;
}

/* 8 bits of a line of L bits (L a multiple of 8) starting at line bit
 * 'src', wrapping around the end of the line. */
static inline unsigned line_byte(const uint8_t *line, size_t L, size_t src)
{
    size_t b = src >> 3, sh = src & 7;
    if (src + 8 <= L) {
        unsigned lo = line[b];
        unsigned hi = sh != 0 ? line[b + 1] : 0;
        return ((lo | hi << 8) >> sh) & 0xffu;
    }
    unsigned v = 0;
    for (size_t k = 0; k < 8; k++) {
        size_t i = (src + k) % L;
        v |= (unsigned)get_bit(line, i) << k;
    }
    return v;
}

void bm_iris_rotate(const struct bm_spec *spec, const uint8_t *in, int shift, uint8_t *out)
{
    size_t bpc = spec->iris_bits_per_cell, cols = spec->iris_columns;
    size_t lines = (size_t)spec->iris_filters * spec->iris_rows;
    size_t L = cols * bpc;
    /* Out column c takes in column (c - shift) mod cols, i.e. out bit j of a
     * line takes in bit (j - shift * bpc) mod L. */
    long k = (long)shift % (long)cols;
    if (k < 0)
        k += (long)cols;
    size_t off = (size_t)k * bpc;
    if (L % 8 == 0) {
        /* Whole-byte lines (the default: 512 bits): build each output byte
         * from an 8-bit window of the input line, so a probe's 31 variants
         * cost microseconds instead of a bit loop each. */
        size_t lb = L / 8;
        for (size_t l = 0; l < lines; l++) {
            const uint8_t *src = in + l * lb;
            uint8_t *dst = out + l * lb;
            for (size_t j = 0; j < lb; j++) {
                size_t from = 8 * j >= off ? 8 * j - off : 8 * j + L - off;
                dst[j] = (uint8_t)line_byte(src, L, from);
            }
        }
        return;
    }
    memset(out, 0, lines * L / 8);
    for (size_t l = 0; l < lines; l++) {
        size_t base = l * L;
        for (size_t j = 0; j < L; j++) {
            size_t src = j >= off ? j - off : j + L - off;
            if (get_bit(in, base + src))
                out[(base + j) >> 3] |= (uint8_t)(1u << ((base + j) & 7));
        }
    }
}

/* Keep only the bits of columns [c0, c1) of every line. */
static void keep_columns(const struct bm_spec *spec, uint8_t *m, size_t c0, size_t c1)
{
    size_t bpc = spec->iris_bits_per_cell, cols = spec->iris_columns;
    size_t lines = (size_t)spec->iris_filters * spec->iris_rows;
    size_t L = cols * bpc;
    for (size_t l = 0; l < lines; l++)
        for (size_t j = 0; j < L; j++) {
            size_t c = j / bpc;
            if (c < c0 || c >= c1) {
                size_t i = l * L + j;
                m[i >> 3] &= (uint8_t)~(1u << (i & 7));
            }
        }
}

int bm_iris_probes_prepare(const struct bm_spec *spec, const struct bm_probe *p, size_t n,
                           struct bm_iris_probes *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    int oi = spec->iris_scoring == BM_IRIS_OPENIRIS;
    int r = (int)spec->iris_rotations;
    out->n = n;
    out->nshift = 2 * (size_t)r + 1;
    out->nvar = oi ? 2 * out->nshift : out->nshift;
    out->bytes = bm_spec_iris_bytes(spec);
    out->vstride = (out->bytes + 63) & ~(size_t)63;
    size_t total = n * out->nvar * out->vstride;
    out->code = bm_alloc64(total);
    out->mask = bm_alloc64(total);
    out->shift = malloc(out->nshift * sizeof *out->shift);
    if (out->code == NULL || out->mask == NULL || out->shift == NULL) {
        bm_iris_probes_free(out);
        return bm_seterr(err, errlen, BM_ENOMEM, "iris: out of memory for %zu probes", n);
    }
    /* Scan order decides which shift wins a tie: -r..+r in our modes;
     * open-iris scans 0, -1, +1, -2, +2, ... and keeps the first strict
     * minimum, so openiris mode does the same. */
    for (size_t si = 0; si < out->nshift; si++) {
        if (oi)
            out->shift[si] = si == 0 ? 0 : (si % 2 == 1 ? -(int)((si + 1) / 2) : (int)(si / 2));
        else
            out->shift[si] = (int)si - r;
    }
    size_t half = spec->iris_columns / 2;
    for (size_t i = 0; i < n; i++) {
        if (p[i].iris_code == NULL || p[i].iris_mask == NULL) {
            bm_iris_probes_free(out);
            return bm_seterr(err, errlen, BM_EINVAL, "probe %zu: iris code and mask are required", i);
        }
        for (size_t si = 0; si < out->nshift; si++) {
            size_t v = i * out->nvar + (oi ? 2 * si : si);
            uint8_t *c = out->code + v * out->vstride;
            uint8_t *m = out->mask + v * out->vstride;
            bm_iris_rotate(spec, p[i].iris_code, out->shift[si], c);
            bm_iris_rotate(spec, p[i].iris_mask, out->shift[si], m);
            if (oi) {
                /* Variant 2si: low column half; 2si+1: high half. */
                memcpy(c + out->vstride, c, out->bytes);
                memcpy(m + out->vstride, m, out->bytes);
                keep_columns(spec, m, 0, half);
                keep_columns(spec, m + out->vstride, half, spec->iris_columns);
            }
        }
    }
    return BM_OK;
}

void bm_iris_probes_free(struct bm_iris_probes *ip)
{
    if (ip == NULL)
        return;
    free(ip->code);
    free(ip->mask);
    free(ip->shift);
    memset(ip, 0, sizeof *ip);
}

/* open-iris's normalised HD: max(0, m - (m - t/v) * (g * v + 0.5)). */
static double nhd(double t, double v)
{
    double x = OI_MEAN - (OI_MEAN - t / v) * (OI_GRADIENT * v + 0.5);
    return x > 0 ? x : 0;
}

float bm_iris_score(const struct bm_spec *spec, const struct bm_iris_probes *ip,
                    const uint32_t *diff, const uint32_t *valid, int *best_shift)
{
    uint32_t minv = spec->iris_min_valid_bits > 0 ? spec->iris_min_valid_bits : 1;
    if (spec->iris_scoring == BM_IRIS_FRACTIONAL) {
        /* t/v < bt/bv  <=>  t * bv < bt * v (exact in 64 bits). Distinct
         * fractions with terms <= 2^20 (the code size limit) differ by at least
         * 2^-40, far above double rounding, so
         * this picks the same shift as comparing the doubles, with one
         * division instead of one per shift. */
        uint64_t bt = 1, bv = 0; /* bv = 0: nothing yet */
        int shift = 0;
        for (size_t si = 0; si < ip->nshift; si++) {
            uint64_t t = diff[si], v = valid[si];
            if (v < minv)
                continue;
            if (bv == 0 || t * bv < bt * v) {
                bt = t;
                bv = v;
                shift = ip->shift[si];
            }
        }
        if (best_shift != NULL)
            *best_shift = shift;
        if (bv == 0)
            return NAN;
        return (float)(1.0 - (double)bt / (double)bv);
    }
    double best = INFINITY;
    int shift = 0;
    for (size_t si = 0; si < ip->nshift; si++) {
        double hd;
        if (spec->iris_scoring == BM_IRIS_OPENIRIS) {
            uint64_t tl = diff[2 * si], vl = valid[2 * si];
            uint64_t th = diff[2 * si + 1], vh = valid[2 * si + 1];
            if (vl + vh < minv)
                continue;
            /* open-iris doubles each half's counts (so a half weighs like a
             * whole code in the gradient term); index 0 is the high half. */
            double t0 = 2.0 * (double)th, v0 = 2.0 * (double)vh;
            double t1 = 2.0 * (double)tl, v1 = 2.0 * (double)vl;
            double whole = nhd(t0 + t1, v0 + v1);
            double n0, n1;
            if (v0 > 0) {
                n0 = nhd(t0, v0);
                /* 0/0 in numpy is NaN and Python's max(0, NaN) is 0; it is
                 * multiplied by v1 = 0 anyway. */
                n1 = v1 > 0 ? nhd(t1, v1) : 0;
            } else {
                /* open-iris tests the first half's count for both halves. */
                n0 = OI_MEAN;
                n1 = OI_MEAN;
            }
            hd = (whole + (n0 * v0 + n1 * v1) / (v0 + v1)) / 2;
        } else {
            uint32_t t = diff[si], v = valid[si];
            if (v < minv)
                continue;
            hd = spec->iris_scoring == BM_IRIS_NORMALISED ? nhd(t, v) : (double)t / (double)v;
        }
        if (hd < best) {
            best = hd;
            shift = ip->shift[si];
        }
    }
    if (best_shift != NULL)
        *best_shift = shift;
    if (best == INFINITY)
        return NAN;
    return (float)(1.0 - best);
}

float bm_iris_score_one(const struct bm_kernels *k, const struct bm_spec *spec,
                        const struct bm_iris_probes *ip, size_t i, const uint8_t *gcode,
                        const uint8_t *gmask, int *best_shift)
{
    uint32_t diff[2 * 2 * 2048 + 2], valid[2 * 2 * 2048 + 2];
    size_t v0 = i * ip->nvar;
    k->iris_counts(ip->code + v0 * ip->vstride, ip->mask + v0 * ip->vstride, ip->vstride,
                   ip->nvar, gcode, gmask, ip->bytes, diff, valid);
    return bm_iris_score(spec, ip, diff, valid, best_shift);
}
