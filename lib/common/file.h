/* Reading a small file whole, with a size limit checked while reading, so a
 * configuration or policy path pointing at something huge is refused
 * instead of exhausting memory. */
#ifndef BM_FILE_H
#define BM_FILE_H

#include <stddef.h>

/* Read the file at 'path' into a new buffer of at most 'max' bytes plus a
 * terminating NUL (not counted in *len). On BM_OK the caller owns *out
 * (free()). Otherwise nothing is allocated and err names the path:
 * BM_EIO (cannot open or read), BM_ERANGE (larger than 'max'), BM_ENOMEM. */
int bm_file_read(const char *path, size_t max, char **out, size_t *len, char *err,
                 size_t errlen);

#endif /* BM_FILE_H */
