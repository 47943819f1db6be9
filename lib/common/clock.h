/* The clocks, in the units the code uses. Monotonic time for durations,
 * deadlines and rates (it never jumps); wall-clock time (CLOCK_REALTIME)
 * only for timestamps that leave the process: wire fields, logs, ids.
 * Thread: any. */
#ifndef BM_CLOCK_H
#define BM_CLOCK_H

#include <stdint.h>

/* Monotonic milliseconds, microseconds and seconds (arbitrary origin). */
int64_t bm_mono_ms(void);
int64_t bm_mono_us(void);
double bm_mono_s(void);

/* Wall-clock milliseconds since the Unix epoch. */
int64_t bm_wall_ms(void);

/* Sleep 'ms' milliseconds on the monotonic clock (<= 0: return at once). */
void bm_sleep_ms(int64_t ms);

#endif /* BM_CLOCK_H */
