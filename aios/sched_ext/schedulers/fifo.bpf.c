/* SPDX-License-Identifier: GPL-2.0 */
/*
 * aios_fifo - global first-in-first-out.
 *
 * Policy: every runnable task goes to the tail of one shared queue; a CPU that
 * needs work takes the head. A task that wakes while some CPU is idle goes
 * straight to that CPU (the kernel's default idle-CPU pick). Long slices mean
 * few context switches: short jobs started together tend to run to
 * completion in arrival order, which lowers mean completion time compared
 * with processor sharing, at the price of wake-up latency under load.
 *
 * Tunables (.rodata):
 *   slice_ns  time slice given to every task (default 20 ms)
 */
#include "aios_scx.h"

char _license[] SEC("license") = "GPL";

const volatile u64 slice_ns = 20000000;

#define SHARED_DSQ 0

u64 nr_enqueued, nr_direct; /* .bss counters, readable with bpftool map dump */

s32 BPF_STRUCT_OPS(fifo_select_cpu, struct task_struct *p, s32 prev_cpu, u64 wake_flags)
{
	bool is_idle = false;
	s32 cpu = scx_bpf_select_cpu_dfl(p, prev_cpu, wake_flags, &is_idle);

	if (is_idle) {
		__sync_fetch_and_add(&nr_direct, 1);
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, 0);
	}
	return cpu;
}

void BPF_STRUCT_OPS(fifo_enqueue, struct task_struct *p, u64 enq_flags)
{
	__sync_fetch_and_add(&nr_enqueued, 1);
	scx_bpf_dsq_insert(p, SHARED_DSQ, slice_ns, enq_flags);
}

void BPF_STRUCT_OPS(fifo_dispatch, s32 cpu, struct task_struct *prev)
{
	scx_bpf_dsq_move_to_local(SHARED_DSQ);
}

s32 BPF_STRUCT_OPS_SLEEPABLE(fifo_init)
{
	return scx_bpf_create_dsq(SHARED_DSQ, -1);
}

void BPF_STRUCT_OPS(fifo_exit, struct scx_exit_info *ei)
{
}

SEC(".struct_ops.link")
struct sched_ext_ops fifo_ops = {
	.select_cpu = (void *)fifo_select_cpu,
	.enqueue = (void *)fifo_enqueue,
	.dispatch = (void *)fifo_dispatch,
	.init = (void *)fifo_init,
	.exit = (void *)fifo_exit,
	.timeout_ms = 5000,
	.name = "aios_fifo",
};
