/* Shared helpers for the guest workloads: monotonic clock, percentiles, a
 * calibrated CPU burner and argument parsing. Every workload prints exactly one
 * JSON object on one line so the host can parse it from the serial console. */
#ifndef WL_COMMON_H
#define WL_COMMON_H
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static inline uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Percentile (0..100) of a sorted array. */
static inline uint64_t pct(const uint64_t *sorted, size_t n, double p)
{
	if (!n)
		return 0;
	size_t i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);
	return sorted[i < n ? i : n - 1];
}

/* A deterministic integer-mixing loop: the unit of CPU work. The result is
 * returned so the compiler cannot drop the loop. */
static inline uint64_t burn(uint64_t iters, uint64_t seed)
{
	uint64_t x = seed | 1;
	for (uint64_t i = 0; i < iters; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
	}
	return x;
}

/* "--key=value" integer option with a default. */
static inline long opt_long(int argc, char **argv, const char *key, long dflt)
{
	size_t kl = strlen(key);
	for (int i = 1; i < argc; i++)
		if (!strncmp(argv[i], "--", 2) && !strncmp(argv[i] + 2, key, kl) && argv[i][2 + kl] == '=')
			return strtol(argv[i] + 3 + kl, NULL, 10);
	return dflt;
}

static inline const char *opt_str(int argc, char **argv, const char *key, const char *dflt)
{
	size_t kl = strlen(key);
	for (int i = 1; i < argc; i++)
		if (!strncmp(argv[i], "--", 2) && !strncmp(argv[i] + 2, key, kl) && argv[i][2 + kl] == '=')
			return argv[i] + 3 + kl;
	return dflt;
}
#endif
