/* Batch workload: --tasks parallel jobs (default 40), all but one short and
 * one --long_factor times longer, started together. Every job is a separate
 * process doing one --kind of real work in --units steps:
 *   compress  LZ77-style compression of generated text blocks
 *   checksum  table CRC32 + Adler-32 over buffers
 *   sort      qsort of random integer arrays
 *   logscan   generate and parse log lines, count levels and slow requests
 *   index     write files to /tmp, read them back, build a word-count table
 *   compile   per unit fork a short "compiler" child that tokenizes and
 *             writes an object file (many short-lived processes)
 *   map       a data-parallel map with --threads threads over a partition
 *   pipeline  three threads joined by pipes (produce -> transform -> consume)
 *   spin      a pure CPU loop (the plain "batch" workload)
 * The parent measures each job's completion time from the common start and
 * prints mean / short-mean / p50 / p90 / last completion and throughput. The
 * long job's position in start order is --long_index; schedulers never learn
 * which one it is except by watching runtime. */
#include "wl_common.h"
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

static uint64_t rng_state = 88172645463325252ull;
static inline uint64_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static long scale;
static volatile uint64_t sink; /* keeps the work observable to the compiler */

static const char *WORDS[] = {"alpha", "beta", "gamma", "delta", "sched", "kernel", "queue", "task",
			      "vtime", "slice", "idle", "cpu", "wake", "sleep", "run", "lock"};

static size_t gen_text(char *buf, size_t n)
{
	size_t o = 0;
	while (o + 16 < n) {
		const char *w = WORDS[rnd() % 16];
		size_t l = strlen(w);
		memcpy(buf + o, w, l);
		o += l;
		buf[o++] = (rnd() % 8) ? ' ' : '\n';
	}
	buf[o] = 0;
	return o;
}

static uint64_t do_compress(void)
{
	static char in[16384];
	static unsigned char out[20000];
	static uint32_t table[4096];
	size_t n = gen_text(in, sizeof(in) - 1), o = 0;
	memset(table, 0, sizeof(table));
	for (size_t i = 0; i + 3 < n;) {
		uint32_t h = ((uint32_t)in[i] * 2654435761u ^ (uint32_t)in[i + 1] * 40503u ^ (uint32_t)in[i + 2]) & 4095;
		uint32_t cand = table[h];
		table[h] = (uint32_t)i;
		size_t len = 0;
		while (cand < i && i + len < n && len < 255 && in[cand + len] == in[i + len])
			len++;
		if (len >= 4 && o + 3 < sizeof(out)) {
			out[o++] = 0xff;
			out[o++] = (unsigned char)len;
			out[o++] = (unsigned char)(i - cand);
			i += len;
		} else {
			if (o < sizeof(out))
				out[o++] = (unsigned char)in[i];
			i++;
		}
	}
	return o;
}

static uint32_t crc_table[256];
static uint64_t do_checksum(void)
{
	static unsigned char buf[32768];
	if (!crc_table[1])
		for (uint32_t i = 0; i < 256; i++) {
			uint32_t c = i;
			for (int k = 0; k < 8; k++)
				c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
			crc_table[i] = c;
		}
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (unsigned char)rnd();
	uint32_t crc = ~0u, a = 1, b = 0;
	for (size_t i = 0; i < sizeof(buf); i++) {
		crc = crc_table[(crc ^ buf[i]) & 0xff] ^ (crc >> 8);
		a = (a + buf[i]) % 65521;
		b = (b + a) % 65521;
	}
	return crc ^ ((uint64_t)b << 16 | a);
}

static int cmp_int(const void *x, const void *y)
{
	int a = *(const int *)x, b = *(const int *)y;
	return (a > b) - (a < b);
}
static uint64_t do_sort(void)
{
	static int arr[8192];
	for (size_t i = 0; i < 8192; i++)
		arr[i] = (int)(rnd() & 0x7fffffff);
	qsort(arr, 8192, sizeof(int), cmp_int);
	return (uint64_t)arr[4096];
}

static uint64_t do_logscan(void)
{
	static const char *lv[] = {"INFO", "WARN", "ERROR", "DEBUG"};
	char line[160];
	uint64_t counts[4] = {0}, slow = 0;
	for (int i = 0; i < 600; i++) {
		snprintf(line, sizeof(line), "2026-11-21T20:%02d:%02d level=%s svc=%s latency=%lums path=/api/v1/%s",
			 (int)(rnd() % 60), (int)(rnd() % 60), lv[rnd() % 4], WORDS[rnd() % 16],
			 (unsigned long)(rnd() % 900), WORDS[rnd() % 16]);
		for (int k = 0; k < 4; k++)
			if (strstr(line, lv[k])) {
				counts[k]++;
				break;
			}
		const char *p = strstr(line, "latency=");
		if (p && strtol(p + 8, NULL, 10) > 500)
			slow++;
	}
	return counts[2] * 1000 + slow;
}

static uint64_t do_index(int task, long unit)
{
	static char buf[8192];
	char path[64];
	snprintf(path, sizeof(path), "/tmp/wl_idx_%d_%ld", task, unit % 4);
	size_t n = gen_text(buf, sizeof(buf) - 1);
	int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
	if (fd >= 0) {
		if (write(fd, buf, n) < 0)
			n = 0;
		close(fd);
	}
	memset(buf, 0, sizeof(buf));
	fd = open(path, O_RDONLY);
	ssize_t r = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : 0;
	if (fd >= 0)
		close(fd);
	uint32_t table[256] = {0};
	uint32_t h = 2166136261u;
	for (ssize_t i = 0; i < r; i++) {
		if (buf[i] == ' ' || buf[i] == '\n') {
			table[h & 255]++;
			h = 2166136261u;
		} else {
			h = (h ^ (unsigned char)buf[i]) * 16777619u;
		}
	}
	return table[7] + table[42];
}

static uint64_t do_compile(int task, long unit)
{
	pid_t pid = fork();
	if (pid == 0) {
		/* the "compiler": tokenize generated source and emit an object */
		uint64_t x = do_logscan() + do_index(task, unit);
		x += burn(20000 * (uint64_t)scale, x);
		_exit((int)(x & 1));
	}
	int st;
	if (pid > 0)
		waitpid(pid, &st, 0);
	return (uint64_t)pid;
}

struct map_arg {
	long n;
	double acc;
};
static void *map_fn(void *a)
{
	struct map_arg *m = a;
	double acc = 0;
	for (long i = 0; i < m->n; i++)
		acc += sqrt((double)(i % 1000) + 0.5) * 1.0001;
	m->acc = acc;
	return NULL;
}
static long nthreads;
static uint64_t do_map(void)
{
	pthread_t th[8];
	struct map_arg args[8];
	long t = nthreads > 8 ? 8 : nthreads;
	for (long i = 0; i < t; i++) {
		args[i].n = 60000 * scale / t;
		pthread_create(&th[i], NULL, map_fn, &args[i]);
	}
	double acc = 0;
	for (long i = 0; i < t; i++) {
		pthread_join(th[i], NULL);
		acc += args[i].acc;
	}
	return (uint64_t)acc;
}

struct stage {
	int in, out;
	long items;
};
static void *stage_fn(void *a)
{
	struct stage *s = a;
	char buf[1024];
	uint64_t x = 1;
	for (long i = 0; i < s->items; i++) {
		if (s->in >= 0) {
			size_t got = 0;
			while (got < sizeof(buf)) {
				ssize_t r = read(s->in, buf + got, sizeof(buf) - got);
				if (r <= 0)
					return NULL;
				got += (size_t)r;
			}
		} else {
			gen_text(buf, sizeof(buf) - 1);
		}
		x = burn(3000, x ^ (uint64_t)buf[i % 1024]);
		buf[0] = (char)x;
		if (s->out >= 0 && write(s->out, buf, sizeof(buf)) < 0)
			return NULL;
	}
	return NULL;
}
static uint64_t do_pipeline(long items)
{
	int p1[2], p2[2];
	if (pipe(p1) || pipe(p2))
		return 0;
	struct stage s[3] = {{-1, p1[1], items}, {p1[0], p2[1], items}, {p2[0], -1, items}};
	pthread_t th[3];
	for (int i = 0; i < 3; i++)
		pthread_create(&th[i], NULL, stage_fn, &s[i]);
	for (int i = 0; i < 3; i++)
		pthread_join(th[i], NULL);
	close(p1[0]);
	close(p1[1]);
	close(p2[0]);
	close(p2[1]);
	return (uint64_t)items;
}

static uint64_t run_job(const char *kind, int task, long units)
{
	uint64_t x = 0;
	if (!strcmp(kind, "pipeline"))
		return do_pipeline(units * 8 * scale);
	for (long u = 0; u < units; u++) {
		for (long s = 0; s < (strcmp(kind, "compile") && strcmp(kind, "map") ? scale : 1); s++) {
			if (!strcmp(kind, "compress"))
				x += do_compress();
			else if (!strcmp(kind, "checksum"))
				x += do_checksum();
			else if (!strcmp(kind, "sort"))
				x += do_sort();
			else if (!strcmp(kind, "logscan"))
				x += do_logscan();
			else if (!strcmp(kind, "index"))
				x += do_index(task, u);
			else if (!strcmp(kind, "compile"))
				x += do_compile(task, u);
			else if (!strcmp(kind, "map"))
				x += do_map();
			else
				x += burn(100000, x + 1);
		}
	}
	return x;
}

int main(int argc, char **argv)
{
	const char *kind = opt_str(argc, argv, "kind", "spin");
	int ntasks = (int)opt_long(argc, argv, "tasks", 40);
	long units = opt_long(argc, argv, "units", 4);
	long long_factor = opt_long(argc, argv, "long_factor", 20);
	int long_index = (int)opt_long(argc, argv, "long_index", ntasks / 2);
	scale = opt_long(argc, argv, "scale", 1);
	nthreads = opt_long(argc, argv, "threads", 2);
	if (ntasks < 1 || ntasks > 1024)
		ntasks = 40;
	pid_t *pids = calloc((size_t)ntasks, sizeof(*pids));
	/* Each job stamps its own completion time into shared memory: the
	 * parent's wait() would add the parent's own scheduling delay. */
	uint64_t *done = mmap(NULL, (size_t)ntasks * sizeof(*done), PROT_READ | PROT_WRITE,
			      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (done == MAP_FAILED)
		return 1;
	uint64_t t0 = now_ns();
	for (int i = 0; i < ntasks; i++) {
		pid_t pid = fork();
		if (pid == 0) {
			rng_state ^= (uint64_t)(i + 1) * 0x9E3779B97F4A7C15ull;
			uint64_t r = run_job(kind, i, i == long_index ? units * long_factor : units);
			sink = r;
			done[i] = now_ns() - t0;
			_exit(0);
		}
		pids[i] = pid;
	}
	for (int left = ntasks; left > 0; left--) {
		int st;
		if (wait(&st) < 0)
			break;
	}
	double sum = 0, ssum = 0;
	uint64_t last = 0;
	for (int i = 0; i < ntasks; i++) {
		sum += (double)done[i];
		if (i != long_index)
			ssum += (double)done[i];
		if (done[i] > last)
			last = done[i];
	}
	uint64_t long_done = long_index < ntasks ? done[long_index] : 0;
	qsort(done, (size_t)ntasks, sizeof(*done), cmp_u64);
	printf("{\"workload\":\"batch\",\"kind\":\"%s\",\"tasks\":%d,\"mean_completion_ms\":%.1f,"
	       "\"short_mean_completion_ms\":%.1f,\"p50_completion_ms\":%.1f,\"p90_completion_ms\":%.1f,"
	       "\"makespan_ms\":%.1f,\"long_completion_ms\":%.1f,\"tasks_per_s\":%.2f}\n",
	       kind, ntasks, sum / ntasks / 1e6, ntasks > 1 ? ssum / (ntasks - 1) / 1e6 : 0.0,
	       pct(done, (size_t)ntasks, 50) / 1e6, pct(done, (size_t)ntasks, 90) / 1e6, last / 1e6,
	       long_done / 1e6, ntasks * 1e9 / (double)last);
	return 0;
}
