/* The at-rest keyring (see keyring.h): a small array of (id, 32 key bytes)
 * with one optional current entry.
 *
 * Invariant: every byte of key material this file touches -- the entries,
 * the file buffer, the parsed key -- is wiped with OPENSSL_cleanse before
 * its memory is released or goes out of scope, on success and on failure. */
#include "crypto/keyring.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "conf/conf.h"

/* Largest key file read: 64 hex digits plus a newline, and one more byte
 * so a longer file is detected without reading all of it. */
#define FILE_MAX 66

struct entry {
    char id[BM_KEYRING_ID_MAX + 1];
    uint8_t key[BM_AEAD_KEY_BYTES];
};

struct bm_keyring {
    struct entry *e;     /* owned; key bytes wiped on free */
    size_t n, cap;
    long current;        /* index into e, or -1 */
    int allow_plaintext; /* 1: not strict although a key is current */
    char warning[512];   /* "" or a note about loose file permissions */
};

int bm_keyring_valid_id(const char *id)
{
    size_t n = id != NULL ? strlen(id) : 0;
    if (n == 0 || n > BM_KEYRING_ID_MAX)
        return 0;
    for (; *id; id++)
        if (!((*id >= 'a' && *id <= 'z') || (*id >= 'A' && *id <= 'Z') ||
              (*id >= '0' && *id <= '9') || *id == '.' || *id == '_' || *id == '-'))
            return 0;
    return 1;
}

struct bm_keyring *bm_keyring_new(void)
{
    struct bm_keyring *kr = calloc(1, sizeof *kr);
    if (kr != NULL)
        kr->current = -1;
    return kr;
}

void bm_keyring_free(struct bm_keyring *kr)
{
    if (kr == NULL)
        return;
    if (kr->e != NULL)
        OPENSSL_cleanse(kr->e, kr->cap * sizeof *kr->e);
    free(kr->e);
    free(kr);
}

static long find(const struct bm_keyring *kr, const char *id)
{
    for (size_t i = 0; kr != NULL && id != NULL && i < kr->n; i++)
        if (strcmp(kr->e[i].id, id) == 0)
            return (long)i;
    return -1;
}

int bm_keyring_add(struct bm_keyring *kr, const char *id, const uint8_t key[BM_AEAD_KEY_BYTES],
                   int current, char *err, size_t errlen)
{
    if (kr == NULL || key == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "keyring: missing argument");
    if (!bm_keyring_valid_id(id))
        return bm_seterr(err, errlen, BM_EINVAL, "keyring: key id must be 1-%d of [A-Za-z0-9._-]",
                         BM_KEYRING_ID_MAX);
    if (find(kr, id) >= 0)
        return bm_seterr(err, errlen, BM_ECONFLICT, "keyring: key id '%s' given twice", id);
    if (current && kr->current >= 0)
        return bm_seterr(err, errlen, BM_ECONFLICT,
                         "keyring: key '%s' cannot be current: '%s' already is", id,
                         kr->e[kr->current].id);
    if (kr->n == kr->cap) {
        /* Grow by copying, so the old array can be wiped (realloc could
         * leave a copy of the keys behind in freed memory). */
        size_t cap = kr->cap ? 2 * kr->cap : 4;
        struct entry *bigger = calloc(cap, sizeof *bigger);
        if (bigger == NULL)
            return bm_seterr(err, errlen, BM_ENOMEM, "keyring: out of memory");
        if (kr->e != NULL) {
            memcpy(bigger, kr->e, kr->n * sizeof *bigger);
            OPENSSL_cleanse(kr->e, kr->cap * sizeof *kr->e);
            free(kr->e);
        }
        kr->e = bigger;
        kr->cap = cap;
    }
    struct entry *e = &kr->e[kr->n];
    memcpy(e->id, id, strlen(id) + 1);
    memcpy(e->key, key, BM_AEAD_KEY_BYTES);
    if (current)
        kr->current = (long)kr->n;
    kr->n++;
    return BM_OK;
}

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int bm_keyring_parse_key(const uint8_t *data, size_t len, uint8_t key[BM_AEAD_KEY_BYTES],
                         char *err, size_t errlen)
{
    if (data == NULL || key == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "key: missing argument");
    if (len == BM_AEAD_KEY_BYTES) {
        memcpy(key, data, BM_AEAD_KEY_BYTES);
        return BM_OK;
    }
    if (len == 2 * BM_AEAD_KEY_BYTES || (len == 2 * BM_AEAD_KEY_BYTES + 1 && data[len - 1] == '\n')) {
        for (size_t i = 0; i < BM_AEAD_KEY_BYTES; i++) {
            int hi = hexval(data[2 * i]), lo = hexval(data[2 * i + 1]);
            if (hi < 0 || lo < 0) {
                OPENSSL_cleanse(key, BM_AEAD_KEY_BYTES);
                return bm_seterr(err, errlen, BM_EPROTO,
                                 "key: 64-character key is not hexadecimal (byte %zu)",
                                 hi < 0 ? 2 * i : 2 * i + 1);
            }
            key[i] = (uint8_t)(hi << 4 | lo);
        }
        return BM_OK;
    }
    return bm_seterr(err, errlen, BM_EPROTO,
                     "key: %zu bytes; expected 32 raw bytes or 64 hex digits (plus one "
                     "optional newline)", len);
}

int bm_keyring_add_file(struct bm_keyring *kr, const char *id, const char *path, int current,
                        char *err, size_t errlen)
{
    if (kr == NULL || path == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "keyring: missing argument");
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return bm_seterr(err, errlen, BM_EIO, "at-rest key '%s': cannot open %s: %s",
                         id ? id : "?", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return bm_seterr(err, errlen, BM_EINVAL, "at-rest key '%s': %s is not a regular file",
                         id ? id : "?", path);
    }
    if (st.st_mode & S_IWOTH) {
        close(fd);
        return bm_seterr(err, errlen, BM_EINVAL,
                         "at-rest key '%s': %s is writable by everyone (mode %03o): refused",
                         id ? id : "?", path, (unsigned)(st.st_mode & 0777));
    }
    uint8_t buf[FILE_MAX + 1];
    size_t len = 0;
    ssize_t got;
    while (len < sizeof buf && (got = read(fd, buf + len, sizeof buf - len)) != 0) {
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            int e = errno;
            close(fd);
            OPENSSL_cleanse(buf, sizeof buf);
            return bm_seterr(err, errlen, BM_EIO, "at-rest key '%s': reading %s: %s",
                             id ? id : "?", path, strerror(e));
        }
        len += (size_t)got;
    }
    close(fd);
    uint8_t key[BM_AEAD_KEY_BYTES];
    char why[160];
    int rc = bm_keyring_parse_key(buf, len, key, why, sizeof why);
    OPENSSL_cleanse(buf, sizeof buf);
    if (rc != BM_OK)
        return bm_seterr(err, errlen, rc, "at-rest key '%s' in %s: %s", id ? id : "?", path,
                         len > FILE_MAX ? "file too long; expected 32 raw bytes or 64 hex digits"
                                        : why);
    rc = bm_keyring_add(kr, id, key, current, err, errlen);
    OPENSSL_cleanse(key, sizeof key);
    if (rc == BM_OK && (st.st_mode & S_IROTH) && kr->warning[0] == '\0')
        snprintf(kr->warning, sizeof kr->warning,
                 "at-rest key '%s' file %s is readable by everyone (mode %03o); mount it with "
                 "defaultMode 0440 or chmod o-r", id, path, (unsigned)(st.st_mode & 0777));
    return rc;
}

struct bm_keyring *bm_keyring_from_conf(const struct bm_conf *c, int *rc, char *err,
                                        size_t errlen)
{
    int dummy;
    if (rc == NULL)
        rc = &dummy;
    *rc = BM_OK;
    if (c == NULL || (c->security.at_rest_key_file == NULL &&
                      c->security.at_rest_previous_keys_n == 0))
        return NULL;
    struct bm_keyring *kr = bm_keyring_new();
    if (kr == NULL) {
        *rc = bm_seterr(err, errlen, BM_ENOMEM, "keyring: out of memory");
        return NULL;
    }
    if (c->security.at_rest_key_file != NULL)
        *rc = bm_keyring_add_file(kr, c->security.at_rest_key_id, c->security.at_rest_key_file, 1,
                                  err, errlen);
    for (size_t i = 0; *rc == BM_OK && i < c->security.at_rest_previous_keys_n; i++) {
        const char *entry = c->security.at_rest_previous_keys[i];
        const char *eq = strchr(entry, '=');
        char id[BM_KEYRING_ID_MAX + 1];
        if (eq == NULL || (size_t)(eq - entry) > BM_KEYRING_ID_MAX) {
            *rc = bm_seterr(err, errlen, BM_EINVAL,
                            "security.at_rest_previous_keys: '%s' is not <key id>=<key file>",
                            entry);
            break;
        }
        memcpy(id, entry, (size_t)(eq - entry));
        id[eq - entry] = '\0';
        *rc = bm_keyring_add_file(kr, id, eq + 1, 0, err, errlen);
    }
    if (*rc != BM_OK) {
        bm_keyring_free(kr);
        return NULL;
    }
    kr->allow_plaintext = c->security.at_rest_allow_plaintext;
    return kr;
}

int bm_keyring_strict(const struct bm_keyring *kr)
{
    return kr != NULL && kr->current >= 0 && !kr->allow_plaintext;
}

void bm_keyring_set_allow_plaintext(struct bm_keyring *kr, int allow)
{
    if (kr != NULL)
        kr->allow_plaintext = allow != 0;
}

const char *bm_keyring_current_id(const struct bm_keyring *kr)
{
    return kr != NULL && kr->current >= 0 ? kr->e[kr->current].id : NULL;
}

const uint8_t *bm_keyring_find(const struct bm_keyring *kr, const char *id)
{
    long i = find(kr, id);
    return i >= 0 ? kr->e[i].key : NULL;
}

size_t bm_keyring_count(const struct bm_keyring *kr)
{
    return kr != NULL ? kr->n : 0;
}

const char *bm_keyring_warning(const struct bm_keyring *kr)
{
    return kr != NULL && kr->warning[0] != '\0' ? kr->warning : NULL;
}
