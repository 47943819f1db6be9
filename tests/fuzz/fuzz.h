/* The fuzz harnesses of every decoder and parser that sees outside bytes,
 * callable two ways.
 *
 * With -DBM_FUZZ=ON (clang), each fuzz_*.c also defines
 * LLVMFuzzerTestOneInput and becomes a libFuzzer binary. Without it, the
 * unit test tests/unit/test_wire_fuzz_replay.c compiles the same files with
 * BM_FUZZ_REPLAY defined and feeds them the seed corpus in tests/fuzz/corpus
 * plus deterministic mutations, so the harnesses run in every gcc build.
 *
 * A harness returns 0 and calls abort() when an invariant breaks, which
 * both libFuzzer and cmocka report as a crash. */
#ifndef BM_FUZZ_H
#define BM_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int bm_fuzz_envelope(const uint8_t *data, size_t size);
int bm_fuzz_decode_job(const uint8_t *data, size_t size);
int bm_fuzz_template(const uint8_t *data, size_t size);
int bm_fuzz_atrest(const uint8_t *data, size_t size);
int bm_fuzz_task(const uint8_t *data, size_t size);
int bm_fuzz_partial(const uint8_t *data, size_t size);
int bm_fuzz_enroll(const uint8_t *data, size_t size);
int bm_fuzz_sig_header(const uint8_t *data, size_t size);
int bm_fuzz_resp(const uint8_t *data, size_t size);
int bm_fuzz_segment(const uint8_t *data, size_t size);
int bm_fuzz_manifest(const uint8_t *data, size_t size);
int bm_fuzz_policy(const uint8_t *data, size_t size);
int bm_fuzz_config(const uint8_t *data, size_t size);
int bm_fuzz_audit(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Abort with a message when 'cond' is false; never compiled out. */
#define BM_FUZZ_CHECK(cond)                                                        \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                        \
            abort();                                                               \
        }                                                                          \
    } while (0)

#endif /* BM_FUZZ_H */
