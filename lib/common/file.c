/* See file.h. One read of up to max + 1 bytes tells "fits" from "too big"
 * without a stat() that could race with the file changing. */
#include "file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

int bm_file_read(const char *path, size_t max, char **out, size_t *len, char *err,
                 size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return bm_seterr(err, errlen, BM_EIO, "%s: cannot open: %s", path, strerror(errno));
    char *text = malloc(max + 1);
    size_t n = text != NULL ? fread(text, 1, max + 1, f) : 0;
    int bad = ferror(f) != 0;
    fclose(f);
    if (text == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
    if (bad || n > max) {
        free(text);
        return bm_seterr(err, errlen, bad ? BM_EIO : BM_ERANGE, "%s: %s", path,
                         bad ? "read error" : "larger than the size limit");
    }
    text[n] = '\0';
    *out = text;
    *len = n;
    return BM_OK;
}
