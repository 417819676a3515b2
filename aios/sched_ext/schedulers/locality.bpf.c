/* SPDX-License-Identifier: GPL-2.0 */
/*
 * aios_locality - CPU affinity / cache locality with per-CPU queues.
 *
 * Policy: every CPU has its own queue. A waking task goes back to the CPU it
 * last ran on if that CPU is idle (warm caches), else to any idle CPU it may
 * use, else it queues on its previous CPU. A CPU serves its own queue first
 * and only when that is empty steals the head of another CPU's queue, so
 * tasks migrate only when a CPU would otherwise sit idle. When a task queues
 * behind others while some CPU idles, that CPU is kicked to come and steal.
 *
 * Tunables (.rodata):
 *   slice_ns  time slice (default 10 ms)
 *   steal     1 = idle CPUs steal from other queues (default 1)
 */
#include "aios_scx.h"

char _license[] SEC("license") = "GPL";

const volatile u64 slice_ns = 10000000;
const volatile u32 steal = 1;

#define MAX_CPUS 64

u64 nr_local, nr_stolen;

s32 BPF_STRUCT_OPS(loc_select_cpu, struct task_struct *p, s32 prev_cpu, u64 wake_flags)
{
	s32 cpu;

	if (scx_bpf_test_and_clear_cpu_idle(prev_cpu)) {
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, 0);
		return prev_cpu;
	}
	cpu = scx_bpf_pick_idle_cpu(p->cpus_ptr, 0);
	if (cpu >= 0) {
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, 0);
		return cpu;
	}
	return prev_cpu;
}

void BPF_STRUCT_OPS(loc_enqueue, struct task_struct *p, u64 enq_flags)
{
	s32 cpu = scx_bpf_task_cpu(p), idle;

	scx_bpf_dsq_insert(p, (u64)cpu, slice_ns, enq_flags);
	/* someone idles while we queue: wake it so it can steal */
	idle = scx_bpf_pick_idle_cpu(p->cpus_ptr, 0);
	if (idle >= 0)
		scx_bpf_kick_cpu(idle, SCX_KICK_IDLE);
}

void BPF_STRUCT_OPS(loc_dispatch, s32 cpu, struct task_struct *prev)
{
	u32 nr = scx_bpf_nr_cpu_ids();
	u32 i;

	if (scx_bpf_dsq_move_to_local((u64)cpu)) {
		__sync_fetch_and_add(&nr_local, 1);
		return;
	}
	if (!steal)
		return;
	for (i = 1; i < MAX_CPUS && i < nr; i++) {
		if (scx_bpf_dsq_move_to_local((u64)(((u32)cpu + i) % nr))) {
			__sync_fetch_and_add(&nr_stolen, 1);
			return;
		}
	}
}

s32 BPF_STRUCT_OPS_SLEEPABLE(loc_init)
{
	u32 nr = scx_bpf_nr_cpu_ids();
	u32 i;
	s32 ret;

	for (i = 0; i < MAX_CPUS && i < nr; i++) {
		ret = scx_bpf_create_dsq(i, -1);
		if (ret)
			return ret;
	}
	return 0;
}

void BPF_STRUCT_OPS(loc_exit, struct scx_exit_info *ei)
{
}

SEC(".struct_ops.link")
struct sched_ext_ops locality_ops = {
	.select_cpu = (void *)loc_select_cpu,
	.enqueue = (void *)loc_enqueue,
	.dispatch = (void *)loc_dispatch,
	.init = (void *)loc_init,
	.exit = (void *)loc_exit,
	.timeout_ms = 5000,
	.name = "aios_locality",
};
