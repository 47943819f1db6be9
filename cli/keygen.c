/* `biomatch keygen`: make an Ed25519 signing key for an agency. Writes the
 * private key as PKCS#8 PEM to PREFIX.pem (mode 0600, never over an
 * existing file) and the policy line "<key id>: \"<base64 public key>\"" to
 * PREFIX.pub and stdout, ready to paste under the agency's `keys:` in the
 * policy file (docs/operations.md "Policy and signing keys").
 *
 * Invariant: the private key touches only the new file (created with
 * O_EXCL so a typo cannot overwrite another key) and memory that is
 * cleansed before exit. */
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "common/err.h"
#include "conf/policy.h"

/* Write all of 'data' to a new file 'path' with 'mode'. 0 or -1 (printed). */
static int write_new(const char *path, const char *data, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
    if (fd < 0) {
        fprintf(stderr, "biomatch: %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t n = strlen(data), off = 0;
    while (off < n) {
        ssize_t w = write(fd, data + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            fprintf(stderr, "biomatch: %s: %s\n", path, strerror(errno));
            close(fd);
            unlink(path);
            return -1;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        fprintf(stderr, "biomatch: %s: %s\n", path, strerror(errno));
        unlink(path);
        return -1;
    }
    return 0;
}

int cli_keygen(int argc, char **argv)
{
    const char *out = NULL, *keyid = NULL;
    const char *pos[1];
    size_t npos = 0;
    const struct bm_opt opts[] = {
        { "--out", "PREFIX", &out, "write PREFIX.pem (private, 0600) and PREFIX.pub (required)" },
        { "--key-id", "ID", &keyid, "key id for the policy line (default: the name of PREFIX)" },
    };
    int p = cli_parse(argc, argv, 1, opts, sizeof opts / sizeof opts[0], pos, 0, &npos,
                      "biomatch keygen --out PREFIX [--key-id ID]",
                      "Make an Ed25519 signing key. The private key goes to PREFIX.pem for\n"
                      "`biomatch submit|enroll --sign-key PREFIX.pem --key-id ID`; the line\n"
                      "for the agency's `keys:` map in the policy file goes to PREFIX.pub and\n"
                      "stdout.");
    if (p != 0)
        return p > 0 ? 0 : 2;
    if (out == NULL || out[0] == '\0') {
        fprintf(stderr, "biomatch: keygen needs --out PREFIX\n");
        return 2;
    }
    if (keyid == NULL) {
        const char *slash = strrchr(out, '/');
        keyid = slash != NULL ? slash + 1 : out;
    }
    char err[256];
    char *pem = NULL;
    char pub[BM_POLICY_PUB_B64_LEN];
    if (bm_signer_keygen(&pem, pub, sizeof pub, err, sizeof err) != BM_OK) {
        fprintf(stderr, "biomatch: %s\n", err);
        return 1;
    }
    /* Check the key id the way signing will, before anything is written. */
    struct bm_signer *s = bm_signer_from_pem(pem, strlen(pem), keyid, err, sizeof err);
    if (s == NULL) {
        OPENSSL_cleanse(pem, strlen(pem));
        free(pem);
        fprintf(stderr, "biomatch: --key-id '%s': %s\n", keyid, err);
        return 2;
    }
    bm_signer_destroy(s);
    char privpath[4096], pubpath[4096], line[BM_POLICY_KEY_ID_MAX + BM_POLICY_PUB_B64_LEN + 8];
    int ret = 1;
    if ((size_t)snprintf(privpath, sizeof privpath, "%s.pem", out) >= sizeof privpath ||
        (size_t)snprintf(pubpath, sizeof pubpath, "%s.pub", out) >= sizeof pubpath) {
        fprintf(stderr, "biomatch: --out is too long\n");
    } else {
        snprintf(line, sizeof line, "%s: \"%s\"\n", keyid, pub);
        if (write_new(privpath, pem, 0600) == 0) {
            if (write_new(pubpath, line, 0644) == 0) {
                fputs(line, stdout);
                fprintf(stderr, "keygen: private key %s, policy line %s (key id %s)\n", privpath,
                        pubpath, keyid);
                ret = 0;
            } else {
                unlink(privpath);
            }
        }
    }
    OPENSSL_cleanse(pem, strlen(pem));
    free(pem);
    return ret;
}
