/* See assert.h. Kept out of line so every assertion costs one compare and
 * a call that the compiler knows does not return. */
#include "common/assert.h"

#include <stdio.h>
#include <stdlib.h>

void bm_assert_fail(const char *expr, const char *file, int line, const char *func)
{
    fprintf(stderr, "biomatch: assertion failed: %s (%s:%d, %s)\n", expr, file, line, func);
    fflush(stderr);
    abort();
}
