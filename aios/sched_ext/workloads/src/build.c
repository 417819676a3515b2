/* Parallel build-like workload: --jobs "compile" steps of very different
 * lengths (a deterministic heavy-tailed mix, like a real tree: many small
 * files, a few big ones) run by a make -j style job server with --parallel
 * slots; each step is a fresh short-lived process that does CPU work and
 * writes an object file to /tmp; a final "link" step reads every object.
 * Prints the makespan (wall time of the whole build) and the mean step
 * latency. */
#include "wl_common.h"
#include <fcntl.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
	int jobs = (int)opt_long(argc, argv, "jobs", 60);
	int par = (int)opt_long(argc, argv, "parallel", 4);
	long unit = opt_long(argc, argv, "unit_iters", 200000);
	if (jobs < 1 || jobs > 4096)
		jobs = 60;
	if (par < 1 || par > 256)
		par = 4;
	uint64_t t0 = now_ns(), lat_sum = 0;
	uint64_t *start = calloc((size_t)jobs, sizeof(*start));
	pid_t *pids = calloc((size_t)jobs, sizeof(*pids));
	int next = 0, running = 0, finished = 0;
	while (finished < jobs) {
		while (running < par && next < jobs) {
			/* heavy tail: every 15th file is 12x, every 5th 3x */
			long mult = (next % 15 == 7) ? 12 : (next % 5 == 2) ? 3 : 1;
			int j = next++;
			start[j] = now_ns();
			pid_t pid = fork();
			if (pid == 0) {
				uint64_t x = burn((uint64_t)unit * (uint64_t)mult, (uint64_t)j + 1);
				char path[64], obj[256];
				snprintf(path, sizeof(path), "/tmp/wl_obj_%d.o", j);
				memset(obj, (int)(x & 0xff), sizeof(obj));
				int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
				if (fd >= 0) {
					if (write(fd, obj, sizeof(obj)) < 0)
						x = 0;
					close(fd);
				}
				_exit(0);
			}
			pids[j] = pid;
			running++;
		}
		int st;
		pid_t pid = wait(&st);
		if (pid < 0)
			break;
		for (int j = 0; j < jobs; j++)
			if (pids[j] == pid) {
				lat_sum += now_ns() - start[j];
				pids[j] = 0;
			}
		running--;
		finished++;
	}
	/* link */
	char buf[256];
	uint64_t x = 0;
	for (int j = 0; j < jobs; j++) {
		char path[64];
		snprintf(path, sizeof(path), "/tmp/wl_obj_%d.o", j);
		int fd = open(path, O_RDONLY);
		if (fd >= 0) {
			if (read(fd, buf, sizeof(buf)) > 0)
				x += (unsigned char)buf[0];
			close(fd);
			unlink(path);
		}
	}
	x = burn((uint64_t)unit, x);
	uint64_t total = now_ns() - t0;
	printf("{\"workload\":\"build\",\"jobs\":%d,\"parallel\":%d,\"makespan_ms\":%.1f,\"mean_step_ms\":%.1f,"
	       "\"chk\":%llu}\n",
	       jobs, par, total / 1e6, lat_sum / (double)jobs / 1e6, (unsigned long long)(x & 1));
	return 0;
}
