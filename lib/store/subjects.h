/* The subject table: matcher key (uint64) -> subject id string.
 *
 * The matcher knows subjects only by their key, FNV-1a 64 of the subject id
 * bytes (the same hash whose value modulo S is the shard, docs/wire.md).
 * Workers use this table to turn the keys of a top-k list back into subject
 * ids, and segment decoding fills it. Invariant: a key maps to exactly one
 * string; inserting a different string under a key already present is a
 * hash collision and is refused with BM_ECONFLICT, never silently merged.
 *
 * Layout (for memory: a loaded shard should take at most 1.1x its template
 * bytes, docs/benchmarks.md): an open-addressing table of 12 bytes per slot
 * (8-byte key + 4-byte arena offset, in two parallel arrays, linear
 * probing, load <= 0.8) and one arena of length-prefixed strings. With
 * bm_subjects_reserve() the overhead is 15..30 bytes per subject plus 1
 * length byte.
 *
 * Thread: not synchronised. Any number of readers may call bm_subjects_get()
 * concurrently while no writer runs; a writer (put, reserve) needs exclusive
 * access (the worker builds a new table version or holds its own lock). */
#ifndef BM_SUBJECTS_H
#define BM_SUBJECTS_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* Subject ids are 1..128 bytes (EnrollRequest.subject_id). */
#define BM_SUBJECT_ID_MAX 128

struct bm_subjects;

/* FNV-1a 64 (offset basis 0xcbf29ce484222325, prime 0x100000001b3) of the
 * 'len' bytes of 'id': the subject's matcher key. Equal to bm_subject_key() of
 * wire/shard.h. Thread: any. */
uint64_t bm_subjects_key(const char *id, size_t len);

/* An empty table sized for 'expected' subjects (0 is fine). NULL on ENOMEM
 * with the reason in err. The caller owns it; free with bm_subjects_free(). */
struct bm_subjects *bm_subjects_new(size_t expected, char *err, size_t errlen);

/* Free the table and every string in it. Accepts NULL. */
void bm_subjects_free(struct bm_subjects *t);

/* Make room for 'nsubjects' more subjects with 'nbytes' id bytes in total,
 * so the puts that follow neither rehash nor grow the arena (and memory
 * stays compact). BM_OK, BM_ENOMEM or BM_ERANGE (arena over 4 GiB); the
 * table is unchanged on failure. */
int bm_subjects_reserve(struct bm_subjects *t, size_t nsubjects, size_t nbytes,
                        char *err, size_t errlen);

/* Insert subject 'id' ('len' bytes, copied) under its key, stored in *key
 * when 'key' is not NULL. BM_OK when inserted or when the same string is
 * already there; BM_ECONFLICT when another string has the same key
 * (collision; table unchanged); BM_EINVAL for a length outside
 * 1..BM_SUBJECT_ID_MAX; BM_ENOMEM/BM_ERANGE (table unchanged). */
int bm_subjects_put(struct bm_subjects *t, const char *id, size_t len,
                    uint64_t *key, char *err, size_t errlen);

/* bm_subjects_put() with the key given by the caller instead of hashed.
 * Real callers always pass bm_subjects_key(id, len); tests use it to drive
 * the collision path without searching for an FNV collision. */
int bm_subjects_put_key(struct bm_subjects *t, uint64_t key, const char *id,
                        size_t len, char *err, size_t errlen);

/* The subject id of 'key', not NUL-terminated, with its length in *len; NULL
 * when absent. The pointer borrows the table's arena and stays valid until
 * the next put/reserve or free. */
const char *bm_subjects_get(const struct bm_subjects *t, uint64_t key, size_t *len);

/* Number of subjects. */
size_t bm_subjects_count(const struct bm_subjects *t);

/* Bytes allocated by the table (slots + arena capacity + the struct). */
size_t bm_subjects_memory(const struct bm_subjects *t);

#endif /* BM_SUBJECTS_H */
