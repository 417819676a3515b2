/* SPDX-License-Identifier: GPL-2.0 */
/*
 * aios_ljf - longest-job-first by observed runtime.
 *
 * Policy: the kernel tells us how long each task has run; we keep the total
 * in task-local storage (never looking at names). The shared queue is ordered
 * by a key: the time the task became runnable minus its accumulated runtime
 * (capped at max_boost_ns). A task that has already run a lot looks as if it
 * had arrived earlier, so the job that turns out to be long keeps its CPU and
 * finishes early, while short jobs started together run to completion in
 * arrival order on the remaining CPUs: mean completion time drops (no
 * processor sharing) and the long job no longer ends last.
 * Starvation guard: no key is older than now - starve_ns, so a waiting task
 * runs within starve_ns (kept well below the watchdog's timeout_ms).
 *
 * Tunables (.rodata):
 *   slice_ns      time slice (default 20 ms)
 *   max_boost_ns  most runtime credited as priority (default 2 s)
 *   starve_ns     longest a queued task can be overtaken (default 2 s)
 */
#include "aios_scx.h"

char _license[] SEC("license") = "GPL";

const volatile u64 slice_ns = 20000000;
const volatile u64 max_boost_ns = 2000000000ULL;
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

s32 BPF_STRUCT_OPS(ljf_select_cpu, struct task_struct *p, s32 prev_cpu, u64 wake_flags)
{
	bool is_idle = false;
	s32 cpu = scx_bpf_select_cpu_dfl(p, prev_cpu, wake_flags, &is_idle);

	if (is_idle)
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, 0);
	return cpu;
}

void BPF_STRUCT_OPS(ljf_enqueue, struct task_struct *p, u64 enq_flags)
{
	struct task_ctx *tc = ctx_of(p);
	u64 now = scx_bpf_now(), key = now;

	if (tc) {
		u64 boost = tc->runtime < max_boost_ns ? tc->runtime : max_boost_ns;
		key = tc->runnable_at - boost;
		if ((s64)(key - (now - starve_ns)) < 0)
			key = now - starve_ns;
	}
	scx_bpf_dsq_insert_vtime(p, SHARED_DSQ, slice_ns, key, enq_flags);
}

void BPF_STRUCT_OPS(ljf_dispatch, s32 cpu, struct task_struct *prev)
{
	scx_bpf_dsq_move_to_local(SHARED_DSQ);
}

void BPF_STRUCT_OPS(ljf_runnable, struct task_struct *p, u64 enq_flags)
{
	struct task_ctx *tc = ctx_of(p);

	if (tc)
		tc->runnable_at = scx_bpf_now();
}

void BPF_STRUCT_OPS(ljf_running, struct task_struct *p)
{
	struct task_ctx *tc = ctx_of(p);

	if (tc)
		tc->running_at = scx_bpf_now();
}

void BPF_STRUCT_OPS(ljf_stopping, struct task_struct *p, bool runnable)
{
	struct task_ctx *tc = ctx_of(p);

	if (tc && tc->running_at)
		tc->runtime += scx_bpf_now() - tc->running_at;
}

s32 BPF_STRUCT_OPS_SLEEPABLE(ljf_init)
{
	return scx_bpf_create_dsq(SHARED_DSQ, -1);
}

void BPF_STRUCT_OPS(ljf_exit, struct scx_exit_info *ei)
{
}

SEC(".struct_ops.link")
struct sched_ext_ops ljf_ops = {
	.select_cpu = (void *)ljf_select_cpu,
	.enqueue = (void *)ljf_enqueue,
	.dispatch = (void *)ljf_dispatch,
	.runnable = (void *)ljf_runnable,
	.running = (void *)ljf_running,
	.stopping = (void *)ljf_stopping,
	.init = (void *)ljf_init,
	.exit = (void *)ljf_exit,
	.timeout_ms = 5000,
	.name = "aios_ljf",
};
