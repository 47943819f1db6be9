/* 64-byte aligned, zeroed allocations for the matcher's rows and scratch:
 * one cache line, and the widest SIMD load (AVX-512), never straddle an
 * allocation's start. Its own file because segments, dense and iris
 * storage and the search all use it; living in segment.c it tied dense.c
 * and segment.c into a cycle. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "match/internal.h"

void *bm_alloc64(size_t n)
{
    if (n > SIZE_MAX - 63)
        return NULL;
    size_t sz = (n + 63) & ~(size_t)63;
    if (sz == 0)
        sz = 64;
    void *p = aligned_alloc(64, sz);
    if (p != NULL)
        memset(p, 0, sz);
    return p;
}
