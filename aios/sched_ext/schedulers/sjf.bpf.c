/* SPDX-License-Identifier: GPL-2.0 */
/*
 * aios_sjf - shortest-job-first by observed runtime (least attained service).
 *
 * Policy: the total CPU time each task has used is kept in task-local
 * storage. The shared queue is ordered by the time the task became runnable
 * plus its runtime rounded down to granularity_ns (capped at max_defer_ns):
 * tasks that have run little go first, so fresh and short jobs overtake the
 * ones that have proven long; within one granule tasks keep arrival order and
 * run to completion instead of time-sharing. The long job is recognised by
 * behaviour (runtime), never by name.
 * Starvation guard: no key is older than now - starve_ns, so a long job that
 * waits is served within starve_ns (below the watchdog's timeout_ms).
 *
 * Tunables (.rodata):
 *   slice_ns        time slice (default 10 ms)
 *   granularity_ns  runtime granule; jobs shorter than it are "short" (50 ms)
 *   max_defer_ns    most a long job can be pushed back (default 2 s)
 *   starve_ns       longest a queued task can be overtaken (default 2 s)
 */
#include "aios_scx.h"

char _license[] SEC("license") = "GPL";

const volatile u64 slice_ns = 10000000;
const volatile u64 granularity_ns = 50000000;
const volatile u64 max_defer_ns = 2000000000ULL;
const volatile u64 starve_ns = 2000000000ULL;

#define SHARED_DSQ 0

struct task_ctx {
	u64 runtime;     /* total CPU time observed */
	u64 runnable_at; /* when the current burst became runnable */
	u64 running_at;  /* when it last got a CPU */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_ctx);
} task_ctxs SEC(".maps");

static struct task_ctx *ctx_of(struct task_struct *p)
{
	return bpf_task_storage_get(&task_ctxs, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
}

s32 BPF_STRUCT_OPS(sjf_select_cpu, struct task_struct *p, s32 prev_cpu, u64 wake_flags)
{
	bool is_idle = false;
	s32 cpu = scx_bpf_select_cpu_dfl(p, prev_cpu, wake_flags, &is_idle);

	if (is_idle)
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, 0);
	return cpu;
}

void BPF_STRUCT_OPS(sjf_enqueue, struct task_struct *p, u64 enq_flags)
{
	struct task_ctx *tc = ctx_of(p);
	u64 now = scx_bpf_now(), key = now;

	if (tc) {
		u64 gran = granularity_ns ? granularity_ns : 1;
		u64 defer = tc->runtime / gran * gran;

		if (defer > max_defer_ns)
			defer = max_defer_ns;
		key = tc->runnable_at + defer;
		if ((s64)(key - (now - starve_ns)) < 0)
			key = now - starve_ns;
	}
	scx_bpf_dsq_insert_vtime(p, SHARED_DSQ, slice_ns, key, enq_flags);
}

void BPF_STRUCT_OPS(sjf_dispatch, s32 cpu, struct task_struct *prev)
{
	scx_bpf_dsq_move_to_local(SHARED_DSQ);
}

void BPF_STRUCT_OPS(sjf_runnable, struct task_struct *p, u64 enq_flags)
{
	struct task_ctx *tc = ctx_of(p);

	if (tc)
		tc->runnable_at = scx_bpf_now();
}

void BPF_STRUCT_OPS(sjf_running, struct task_struct *p)
{
	struct task_ctx *tc = ctx_of(p);

	if (tc)
		tc->running_at = scx_bpf_now();
}

void BPF_STRUCT_OPS(sjf_stopping, struct task_struct *p, bool runnable)
{
	struct task_ctx *tc = ctx_of(p);

	if (tc && tc->running_at)
		tc->runtime += scx_bpf_now() - tc->running_at;
}

s32 BPF_STRUCT_OPS_SLEEPABLE(sjf_init)
{
	return scx_bpf_create_dsq(SHARED_DSQ, -1);
}

void BPF_STRUCT_OPS(sjf_exit, struct scx_exit_info *ei)
{
}

SEC(".struct_ops.link")
struct sched_ext_ops sjf_ops = {
	.select_cpu = (void *)sjf_select_cpu,
	.enqueue = (void *)sjf_enqueue,
	.dispatch = (void *)sjf_dispatch,
	.runnable = (void *)sjf_runnable,
	.running = (void *)sjf_running,
	.stopping = (void *)sjf_stopping,
	.init = (void *)sjf_init,
	.exit = (void *)sjf_exit,
	.timeout_ms = 5000,
	.name = "aios_sjf",
};
