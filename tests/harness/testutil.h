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

#endif /* BM_TESTUTIL_H */
