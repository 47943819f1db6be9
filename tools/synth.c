/* See synth.h. */
#include "synth.h"

#include <math.h>

uint64_t bm_synth_next(struct bm_synth *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double bm_synth_uniform(struct bm_synth *r)
{
    return (double)(bm_synth_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

uint64_t bm_synth_below(struct bm_synth *r, uint64_t n)
{
    return (uint64_t)(bm_synth_uniform(r) * (double)n) % n;
}

double bm_synth_normal(struct bm_synth *r)
{
    double u1 = bm_synth_uniform(r), u2 = bm_synth_uniform(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void bm_synth_normal2(struct bm_synth *r, double *a, double *b)
{
    double u1 = bm_synth_uniform(r), u2 = bm_synth_uniform(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    double m = sqrt(-2.0 * log(u1));
    *a = m * cos(6.283185307179586 * u2);
    *b = m * sin(6.283185307179586 * u2);
}
