/* The clocks, in the units the code uses. Monotonic time for durations,
 * deadlines and rates (it never jumps); wall-clock time (CLOCK_REALTIME)
 * only for timestamps that leave the process: wire fields, logs, ids.
 * Thread: any. */
#ifndef BM_CLOCK_H
#define BM_CLOCK_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* Monotonic milliseconds, microseconds and seconds (arbitrary origin). */
int64_t bm_mono_ms(void);
int64_t bm_mono_us(void);
double bm_mono_s(void);

/* Wall-clock milliseconds since the Unix epoch. */
int64_t bm_wall_ms(void);

/* Sleep 'ms' milliseconds on the monotonic clock (<= 0: return at once). */
void bm_sleep_ms(int64_t ms);

/* Initialise 'cv' (attributes: default, except the clock) so that
 * pthread_cond_timedwait measures its deadline on CLOCK_MONOTONIC: a step
 * of the wall clock (NTP, an operator) can then neither stretch a bounded
 * wait into hours nor cut it to nothing. Destroy with pthread_cond_destroy.
 * Returns BM_OK, or BM_ENOMEM / BM_EINVAL from the pthread calls ('cv' is
 * then not initialised). */
int bm_cond_init_mono(pthread_cond_t *cv);

/* The CLOCK_MONOTONIC instant 'us_from_now' microseconds ahead (a negative
 * value means now): the deadline for pthread_cond_timedwait on a condition
 * made by bm_cond_init_mono. */
struct timespec bm_mono_deadline_us(int64_t us_from_now);

#endif /* BM_CLOCK_H */
