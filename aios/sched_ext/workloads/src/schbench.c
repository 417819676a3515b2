/* schbench-like wake-up latency benchmark.
 *
 * M message threads each own W worker threads. A message thread repeatedly
 * stamps the time and wakes each of its workers through a futex, then sleeps
 * for --interval_us. A woken worker records its wake-up latency (time from the
 * stamp to running), does --work_us of CPU work (the "request"), and waits
 * again. Optional --hogs CPU-bound threads compete for the CPUs the whole
 * time, as batch work does on a real machine. Prints p50/p90/p99/max wake-up
 * latency in microseconds and requests per second. */
#include "wl_common.h"
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>

#define MAX_SAMPLES 200000

struct worker {
	_Atomic int futex;
	_Atomic uint64_t stamp;
	uint64_t requests;
	pthread_t th;
};

static struct worker *workers;
static long nworkers_per, nmsg, work_us, interval_us, runtime_ms, hogs;
static uint64_t iters_per_us;
static uint64_t *samples;
static _Atomic size_t nsamples;
static _Atomic int stop;

static void fwait(_Atomic int *f)
{
	while (atomic_load(f) == 0 && !atomic_load(&stop))
		syscall(SYS_futex, f, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
}

static void fwake(_Atomic int *f)
{
	atomic_store(f, 1);
	syscall(SYS_futex, f, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static void *worker_fn(void *arg)
{
	struct worker *w = arg;
	uint64_t sink = 0;
	while (!atomic_load(&stop)) {
		fwait(&w->futex);
		if (atomic_load(&stop))
			break;
		atomic_store(&w->futex, 0);
		uint64_t lat = now_ns() - atomic_load(&w->stamp);
		size_t i = atomic_fetch_add(&nsamples, 1);
		if (i < MAX_SAMPLES)
			samples[i] = lat;
		sink += burn(iters_per_us * work_us, lat);
		w->requests++;
	}
	return (void *)(uintptr_t)sink;
}

static void *msg_fn(void *arg)
{
	long g = (long)(intptr_t)arg;
	uint64_t end = now_ns() + (uint64_t)runtime_ms * 1000000ull;
	while (now_ns() < end) {
		for (long i = 0; i < nworkers_per; i++) {
			struct worker *w = &workers[g * nworkers_per + i];
			atomic_store(&w->stamp, now_ns());
			fwake(&w->futex);
		}
		usleep(interval_us);
	}
	return NULL;
}

static void *hog_fn(void *arg)
{
	uint64_t x = (uint64_t)(uintptr_t)arg;
	while (!atomic_load(&stop))
		x = burn(10000, x);
	return (void *)(uintptr_t)x;
}

int main(int argc, char **argv)
{
	nmsg = opt_long(argc, argv, "message_threads", 2);
	nworkers_per = opt_long(argc, argv, "workers", 4);
	work_us = opt_long(argc, argv, "work_us", 200);
	interval_us = opt_long(argc, argv, "interval_us", 5000);
	runtime_ms = opt_long(argc, argv, "runtime_ms", 3000);
	hogs = opt_long(argc, argv, "hogs", 2);

	/* Calibrate the burner: iterations per microsecond on this CPU. */
	uint64_t t0 = now_ns();
	volatile uint64_t s = burn(2000000, 1);
	(void)s;
	uint64_t dt = now_ns() - t0;
	iters_per_us = dt ? 2000000ull * 1000 / dt : 100;
	if (!iters_per_us)
		iters_per_us = 1;

	samples = calloc(MAX_SAMPLES, sizeof(*samples));
	workers = calloc((size_t)(nmsg * nworkers_per), sizeof(*workers));
	pthread_t *hth = calloc((size_t)hogs + 1, sizeof(*hth));
	pthread_t *mth = calloc((size_t)nmsg, sizeof(*mth));
	for (long i = 0; i < hogs; i++)
		pthread_create(&hth[i], NULL, hog_fn, (void *)(uintptr_t)(i + 7));
	for (long i = 0; i < nmsg * nworkers_per; i++)
		pthread_create(&workers[i].th, NULL, worker_fn, &workers[i]);
	uint64_t start = now_ns();
	for (long g = 0; g < nmsg; g++)
		pthread_create(&mth[g], NULL, msg_fn, (void *)(intptr_t)g);
	for (long g = 0; g < nmsg; g++)
		pthread_join(mth[g], NULL);
	uint64_t elapsed = now_ns() - start;
	atomic_store(&stop, 1);
	for (long i = 0; i < nmsg * nworkers_per; i++) {
		atomic_store(&workers[i].futex, 1);
		syscall(SYS_futex, &workers[i].futex, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
	}
	uint64_t reqs = 0;
	for (long i = 0; i < nmsg * nworkers_per; i++) {
		pthread_join(workers[i].th, NULL);
		reqs += workers[i].requests;
	}
	for (long i = 0; i < hogs; i++)
		pthread_join(hth[i], NULL);

	size_t n = atomic_load(&nsamples);
	if (n > MAX_SAMPLES)
		n = MAX_SAMPLES;
	qsort(samples, n, sizeof(*samples), cmp_u64);
	printf("{\"workload\":\"schbench\",\"samples\":%zu,\"p50_wakeup_us\":%.1f,\"p90_wakeup_us\":%.1f,"
	       "\"p99_wakeup_us\":%.1f,\"max_wakeup_us\":%.1f,\"requests_per_s\":%.1f,\"elapsed_ms\":%.1f}\n",
	       n, pct(samples, n, 50) / 1e3, pct(samples, n, 90) / 1e3, pct(samples, n, 99) / 1e3,
	       n ? samples[n - 1] / 1e3 : 0.0, reqs * 1e9 / (double)elapsed, elapsed / 1e6);
	return 0;
}
