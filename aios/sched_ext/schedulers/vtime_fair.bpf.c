/* SPDX-License-Identifier: GPL-2.0 */
/*
 * aios_vtime - weighted virtual-time fair scheduling.
 *
 * Policy: each task carries a virtual time that advances by the CPU time it
 * used divided by its weight (nice level), so a weight-200 task advances half
 * as fast as a weight-100 one and gets twice the CPU. The shared queue is
 * ordered by virtual time: the task that is most behind its fair share runs
 * next. A task that slept may not bank more than max_lag_slices slices of
 * credit, so a long sleeper cannot monopolise the CPU when it wakes. This is
 * CFS/EEVDF's fairness without the deadline refinement.
 *
 * Tunables (.rodata):
 *   slice_ns        time slice (default 5 ms)
 *   max_lag_slices  credit a waking task may keep, in slices (default 1)
 */
#include "aios_scx.h"

char _license[] SEC("license") = "GPL";

const volatile u64 slice_ns = 5000000;
const volatile u64 max_lag_slices = 1;

#define SHARED_DSQ 0

u64 vtime_now; /* the largest virtual time seen running */

static bool vtime_before(u64 a, u64 b)
{
	return (s64)(a - b) < 0;
}

s32 BPF_STRUCT_OPS(vtime_select_cpu, struct task_struct *p, s32 prev_cpu, u64 wake_flags)
{
	bool is_idle = false;
	s32 cpu = scx_bpf_select_cpu_dfl(p, prev_cpu, wake_flags, &is_idle);

	if (is_idle)
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, 0);
	return cpu;
}

void BPF_STRUCT_OPS(vtime_enqueue, struct task_struct *p, u64 enq_flags)
{
	u64 vtime = p->scx.dsq_vtime;
	u64 floor = vtime_now - slice_ns * max_lag_slices;

	if (vtime_before(vtime, floor)) /* limit the credit of sleepers */
		vtime = floor;
	scx_bpf_dsq_insert_vtime(p, SHARED_DSQ, slice_ns, vtime, enq_flags);
}

void BPF_STRUCT_OPS(vtime_dispatch, s32 cpu, struct task_struct *prev)
{
	scx_bpf_dsq_move_to_local(SHARED_DSQ);
}

void BPF_STRUCT_OPS(vtime_running, struct task_struct *p)
{
	if (vtime_before(vtime_now, p->scx.dsq_vtime))
		vtime_now = p->scx.dsq_vtime;
}

void BPF_STRUCT_OPS(vtime_stopping, struct task_struct *p, bool runnable)
{
	u64 used = slice_ns > p->scx.slice ? slice_ns - p->scx.slice : 0;
	u64 weight = p->scx.weight ? p->scx.weight : 100;

	/* charge the used time, scaled by the inverse of the weight */
	p->scx.dsq_vtime += used * 100 / weight;
}

void BPF_STRUCT_OPS(vtime_enable, struct task_struct *p)
{
	p->scx.dsq_vtime = vtime_now;
}

s32 BPF_STRUCT_OPS_SLEEPABLE(vtime_init)
{
	return scx_bpf_create_dsq(SHARED_DSQ, -1);
}

void BPF_STRUCT_OPS(vtime_exit, struct scx_exit_info *ei)
{
}

SEC(".struct_ops.link")
struct sched_ext_ops vtime_ops = {
	.select_cpu = (void *)vtime_select_cpu,
	.enqueue = (void *)vtime_enqueue,
	.dispatch = (void *)vtime_dispatch,
	.running = (void *)vtime_running,
	.stopping = (void *)vtime_stopping,
	.enable = (void *)vtime_enable,
	.init = (void *)vtime_init,
	.exit = (void *)vtime_exit,
	.timeout_ms = 5000,
	.name = "aios_vtime",
};
