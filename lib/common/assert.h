/* Preconditions in code, not only in prose.
 *
 * BM_ASSERT(cond) states something only a programming error can make
 * false: a NULL where the contract says "not NULL", a count past what the
 * caller allocated, a state the state machine never enters. In a debug
 * build (NDEBUG not defined: CMAKE_BUILD_TYPE=Debug) a false condition
 * prints the expression, file, line and function to stderr and aborts, so
 * a test or a fuzzer stops at the broken caller; in a release build the
 * macro compiles to nothing and 'cond' is not evaluated, so it must have no
 * side effects.
 *
 * Never assert on input from the network, a file, Redis or a user: that is
 * validated and refused with an enum bm_err, whatever the build. */
#ifndef BM_ASSERT_H
#define BM_ASSERT_H

/* Report a failed assertion and abort. Not for direct use. */
_Noreturn void bm_assert_fail(const char *expr, const char *file, int line, const char *func);

#ifdef NDEBUG
#define BM_ASSERT(cond) ((void)0)
#else
#define BM_ASSERT(cond) ((cond) ? (void)0 : bm_assert_fail(#cond, __FILE__, __LINE__, __func__))
#endif

#endif /* BM_ASSERT_H */
