/* A growable byte buffer and a JSON string writer, shared by the log writer
 * and the metrics renderer.
 *
 * Invariant: after any call, 'p' is NULL (nothing appended yet) or points at
 * 'len' bytes followed by a terminating NUL, with len < cap. A failed
 * allocation sets the sticky 'oom' flag and leaves the contents unchanged, so
 * a writer can append many pieces and check once at the end. */
#ifndef BM_OBS_BUF_H
#define BM_OBS_BUF_H

#include <stdbool.h>
#include <stddef.h>

struct bm_obs_buf {
    char *p;     /* malloc'd, NUL-terminated when non-NULL */
    size_t len;  /* bytes used, excluding the NUL */
    size_t cap;  /* bytes allocated */
    bool oom;    /* sticky: an append failed for lack of memory */
};

#define BM_OBS_BUF_INIT {NULL, 0, 0, false}

/* Append 'n' raw bytes. Returns BM_OK or BM_ENOMEM (sticky). Thread: the
 * buffer's owner. */
int bm_obs_buf_append(struct bm_obs_buf *b, const void *data, size_t n);

/* Append a NUL-terminated string. */
int bm_obs_buf_puts(struct bm_obs_buf *b, const char *s);

/* Append printf-style. 'fmt' must be a literal from our own code, never data. */
int bm_obs_buf_printf(struct bm_obs_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Append 's' (n bytes, any content) as a quoted JSON string: '"' and '\\'
 * are escaped, control characters become \n, \t, ... or \u00XX, DEL becomes
 * \u007f, and every byte that is not part of a well-formed UTF-8 sequence
 * (overlong forms, surrogates, code points above U+10FFFF, truncated
 * sequences) becomes U+FFFD. The output is therefore always valid UTF-8 JSON.
 * A NULL 's' appends the JSON literal null. */
int bm_obs_buf_json_str(struct bm_obs_buf *b, const char *s, size_t n);

/* Append a double in the shortest form that reads back to the same value
 * ("%.15g", else "%.17g"). NaN and infinities are written as 'nan_text',
 * 'inf_text' or '-' + 'inf_text' when the caller needs a textual form. */
int bm_obs_buf_double(struct bm_obs_buf *b, double v, const char *nan_text,
                      const char *inf_text);

/* Give up ownership of the bytes: returns the malloc'd, NUL-terminated
 * string (an empty string is allocated when nothing was appended; NULL on
 * out-of-memory) and resets 'b'. The caller frees the result with free(). */
char *bm_obs_buf_take(struct bm_obs_buf *b, size_t *len);

/* Free the bytes and reset 'b'. Accepts a NULL or empty buffer. */
void bm_obs_buf_free(struct bm_obs_buf *b);

#endif /* BM_OBS_BUF_H */
