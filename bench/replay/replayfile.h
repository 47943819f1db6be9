/* Replay files: recorded or synthetic Kafka traffic that biomatch-replay
 * sends again on a schedule (docs/formats.md, "replay file").
 *
 * A file is a header (magic "BMREPLAY", format version, creation time, the
 * source topic) followed by records in non-decreasing order of their
 * relative send time, each with the record's key, value bytes, headers and
 * an optional 'expect' string (the expected rank-1 subject of a synthetic
 * job, "-" for a job known to have no mate), and a trailer holding the
 * record count. All integers are little-endian.
 *
 * Main invariant of the reader: every length is checked against its limit
 * and against the bytes left before it is used; a file cut at any length,
 * including exactly between two records, is refused (the trailer is
 * mandatory), never read past.
 *
 * Thread: a writer or a parsed file belongs to one thread at a time. */
#ifndef BM_REPLAYFILE_H
#define BM_REPLAYFILE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

#define BM_REPLAY_MAGIC "BMREPLAY"
#define BM_REPLAY_VERSION 1u

/* Limits enforced by writer and reader alike. */
#define BM_REPLAY_MAX_TOPIC 249u
#define BM_REPLAY_MAX_KEY (64u * 1024u)
#define BM_REPLAY_MAX_VALUE (16u * 1024u * 1024u)
#define BM_REPLAY_MAX_HEADERS 64u
#define BM_REPLAY_MAX_HDR_NAME 1024u
#define BM_REPLAY_MAX_HDR_VALUE (64u * 1024u)
#define BM_REPLAY_MAX_EXPECT 1024u
#define BM_REPLAY_MAX_RECORDS 100000000u
#define BM_REPLAY_NULL_LEN 0xffffffffu /* a null key, value or header value */

struct bm_replay_hdr {
    const char *name;       /* NUL-terminated */
    const uint8_t *value;   /* NULL for a null header */
    size_t len;
};

/* One record. In a parsed file every pointer borrows from the file's buffer;
 * when writing, everything is borrowed for the duration of the call. */
struct bm_replay_record {
    uint64_t t_us;          /* send time relative to the first record */
    const uint8_t *key;     /* NULL = no key */
    size_t keylen;
    const uint8_t *value;   /* NULL = null value (tombstone) */
    size_t valuelen;
    const struct bm_replay_hdr *headers;
    size_t nheaders;
    const char *expect;     /* NULL = not known; NUL-terminated */
};

/* A parsed file. */
struct bm_replay {
    uint32_t version;
    int64_t created_unix_ms;
    char topic[BM_REPLAY_MAX_TOPIC + 1];
    struct bm_replay_record *records; /* owned */
    size_t nrecords;
    struct bm_replay_hdr *hdrs;       /* owned: all records' headers */
    uint8_t *buf;                     /* owned: file bytes (NULL after bm_replay_parse) */
};

/* ------------------------------------------------------------- writing */

struct bm_replay_writer;

/* Create 'path' (truncating it) and write the header. Returns the writer
 * (caller owns: bm_replay_writer_close to finish the file, or
 * bm_replay_writer_free to abandon it, which leaves a file readers refuse)
 * or NULL with a message in err. */
struct bm_replay_writer *bm_replay_writer_open(const char *path, const char *topic,
                                               int64_t created_unix_ms, char *err,
                                               size_t errlen);

/* Append one record (copied). BM_OK, BM_ERANGE (a length over its limit),
 * BM_EINVAL (t_us below the previous record's, or a NUL inside expect) or
 * BM_EIO. After an error the writer only accepts free. */
int bm_replay_writer_add(struct bm_replay_writer *w, const struct bm_replay_record *r,
                         char *err, size_t errlen);

/* Write the trailer, flush and close, then free 'w' (also on failure).
 * BM_OK or BM_EIO / the writer's earlier error. */
int bm_replay_writer_close(struct bm_replay_writer *w, char *err, size_t errlen);

/* Abandon the file without a trailer and free 'w'. Accepts NULL. */
void bm_replay_writer_free(struct bm_replay_writer *w);

/* ------------------------------------------------------------- reading */

/* Parse 'len' bytes at 'buf' into *out. The records borrow from 'buf',
 * which must outlive *out. BM_OK, or BM_EPROTO (malformed or truncated),
 * BM_ERANGE (a length over its limit), BM_EUNSUPPORTED (another format
 * version), BM_ENOMEM; on failure *out is zeroed and holds nothing. */
int bm_replay_parse(const uint8_t *buf, size_t len, struct bm_replay *out, char *err,
                    size_t errlen);

/* Read and parse the file at 'path'; on BM_OK *out owns the bytes too.
 * Adds BM_EIO to bm_replay_parse's results. */
int bm_replay_read(const char *path, struct bm_replay *out, char *err, size_t errlen);

/* Free what *f owns and zero it. Accepts NULL. */
void bm_replay_free(struct bm_replay *f);

#endif /* BM_REPLAYFILE_H */
