/* Small helpers shared by the cmocka tests: service addresses from the
 * environment, unique names so tests sharing one broker never collide. */
#ifndef BM_TESTUTIL_H
#define BM_TESTUTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

/* The value of environment variable 'name'; fails the test when unset.
 * Integration tests read BIOMATCH_REDIS_URL ("redis://127.0.0.1:PORT") and
 * BIOMATCH_KAFKA_BROKERS ("127.0.0.1:PORT") this way. */
const char *bm_test_env(const char *name);

/* Write "<prefix>.<pid>.<counter>.<random>" into buf: a name no other test
 * run on the same broker or Redis uses. */
void bm_test_unique(char *buf, size_t len, const char *prefix);

/* Monotonic milliseconds, for bounded waits in tests (never for asserting
 * on speed). */
int64_t bm_test_now_ms(void);

/* Send "METHOD path HTTP/1.0" to 127.0.0.1:port; returns the status and
 * copies the body (truncated) to 'body', or -1 when nothing listens there
 * or no answer came within 5 s. */
int bm_test_http(int port, const char *method, const char *path, char *body, size_t bodylen);

/* A TCP port on 127.0.0.1 that was free a moment ago (for a child process
 * whose HTTP port the test must know). */
int bm_test_free_port(void);

/* The path of the built program 'name' (build/bin/<name>, found from this
 * test executable's own path in build/tests) into 'buf'; fails the test
 * when it cannot be worked out. */
void bm_test_bin(char *buf, size_t len, const char *name);

/* Run the tests of 'tests' (n entries) named in $BM_TEST_ONLY (a comma
 * separated list; unset or empty: all of them), as cmocka_run_group_tests
 * does. For runs that only need part of a program, such as the TSan run of
 * the matcher's concurrency tests (scripts/sanitize). A name that matches
 * no test fails the run, so a rename cannot silently empty it. */
int bm_test_run_selected(const char *group, const struct CMUnitTest *tests, size_t n);

struct bm_signer;

/* A fresh Ed25519 signer with key id 'kid' (caller frees with
 * bm_signer_destroy) and, in 'pub' (at least 45 bytes), its public key in
 * the base64 form a policy file takes. Fails the test on any error. */
struct bm_signer *bm_test_signer(const char *kid, char *pub);

#endif /* BM_TESTUTIL_H */
