/* SPDX-License-Identifier: GPL-2.0 */
/*
 * aios_interactive - latency-critical / interactive boost.
 *
 * Policy: for each task we keep a moving average of how long it runs between
 * sleeps (its burst). Tasks whose average burst is below burst_thresh_ns are
 * interactive (they sleep often and run briefly: request handlers, message
 * passing, UI); all others are batch. Interactive tasks go to a high-priority
 * queue with a short slice, and when one wakes while every CPU is busy we
 * preempt a CPU that is running a batch task (SCX_KICK_PREEMPT), so the
 * wake-up latency is one context switch instead of a batch slice. Batch tasks
 * get long slices (fewer switches). Fairness guard: after batch_every
 * consecutive interactive dispatches on a CPU, the batch queue goes first once.
 *
 * Tunables (.rodata):
 *   burst_thresh_ns      average burst below which a task is interactive (2 ms)
 *   interactive_slice_ns slice for interactive tasks (default 2 ms)
 *   batch_slice_ns       slice for batch tasks (default 20 ms)
 *   batch_every          anti-starvation period in dispatches (default 32)
 */
#include "aios_scx.h"

char _license[] SEC("license") = "GPL";

const volatile u64 burst_thresh_ns = 2000000;
const volatile u64 interactive_slice_ns = 2000000;
const volatile u64 batch_slice_ns = 20000000;
const volatile u32 batch_every = 32;

#define HI_DSQ 0
#define LO_DSQ 1
#define MAX_CPUS 64

struct task_ctx {
	u64 avg_burst;  /* EWMA of runtime between sleeps, ns */
	u64 burst;      /* runtime in the current burst */
	u64 running_at;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_ctx);
} task_ctxs SEC(".maps");

struct cpu_state {
	u32 running_batch; /* 1 while a batch task runs on this CPU */
	u32 hi_streak;     /* consecutive interactive dispatches */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_CPUS);
	__type(key, u32);
	__type(value, struct cpu_state);
} cpu_states SEC(".maps");

u64 nr_preempt_kicks;

static struct task_ctx *ctx_of(struct task_struct *p)
{
	return bpf_task_storage_get(&task_ctxs, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
}

static bool is_interactive(struct task_struct *p)
{
	struct task_ctx *tc = ctx_of(p);

	return tc && tc->avg_burst < burst_thresh_ns;
}

s32 BPF_STRUCT_OPS(inter_select_cpu, struct task_struct *p, s32 prev_cpu, u64 wake_flags)
{
	bool is_idle = false;
	s32 cpu = scx_bpf_select_cpu_dfl(p, prev_cpu, wake_flags, &is_idle);

	if (is_idle)
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL,
				   is_interactive(p) ? interactive_slice_ns : batch_slice_ns, 0);
	return cpu;
}

/* Preempt a CPU that runs a batch task, preferring the task's previous CPU. */
static void preempt_batch_cpu(struct task_struct *p)
{
	s32 prev = scx_bpf_task_cpu(p);
	u32 nr = scx_bpf_nr_cpu_ids();
	u32 i;

	for (i = 0; i < MAX_CPUS && i < nr; i++) {
		u32 cpu = ((u32)prev + i) % nr;
		struct cpu_state *cs = bpf_map_lookup_elem(&cpu_states, &cpu);

		if (cs && cs->running_batch &&
		    bpf_cpumask_test_cpu(cpu, p->cpus_ptr)) {
			__sync_fetch_and_add(&nr_preempt_kicks, 1);
			scx_bpf_kick_cpu(cpu, SCX_KICK_PREEMPT);
			return;
		}
	}
}

void BPF_STRUCT_OPS(inter_enqueue, struct task_struct *p, u64 enq_flags)
{
	if (is_interactive(p)) {
		scx_bpf_dsq_insert(p, HI_DSQ, interactive_slice_ns, enq_flags);
		preempt_batch_cpu(p);
	} else {
		scx_bpf_dsq_insert(p, LO_DSQ, batch_slice_ns, enq_flags);
	}
}

void BPF_STRUCT_OPS(inter_dispatch, s32 cpu, struct task_struct *prev)
{
	u32 key = cpu;
	struct cpu_state *cs = bpf_map_lookup_elem(&cpu_states, &key);

	if (cs && cs->hi_streak >= batch_every) {
		cs->hi_streak = 0;
		if (scx_bpf_dsq_move_to_local(LO_DSQ))
			return;
	}
	if (scx_bpf_dsq_move_to_local(HI_DSQ)) {
		if (cs)
			cs->hi_streak++;
		return;
	}
	if (cs)
		cs->hi_streak = 0;
	scx_bpf_dsq_move_to_local(LO_DSQ);
}

void BPF_STRUCT_OPS(inter_running, struct task_struct *p)
{
	struct task_ctx *tc = ctx_of(p);
	u32 key = scx_bpf_task_cpu(p);
	struct cpu_state *cs = bpf_map_lookup_elem(&cpu_states, &key);

	if (tc)
		tc->running_at = scx_bpf_now();
	if (cs)
		cs->running_batch = !is_interactive(p);
}

void BPF_STRUCT_OPS(inter_stopping, struct task_struct *p, bool runnable)
{
	struct task_ctx *tc = ctx_of(p);
	u32 key = scx_bpf_task_cpu(p);
	struct cpu_state *cs = bpf_map_lookup_elem(&cpu_states, &key);

	if (cs)
		cs->running_batch = 0;
	if (!tc || !tc->running_at)
		return;
	tc->burst += scx_bpf_now() - tc->running_at;
	/* a burst that is already long marks the task batch without waiting to sleep */
	if (tc->burst > tc->avg_burst && tc->burst > burst_thresh_ns)
		tc->avg_burst = (tc->avg_burst * 3 + tc->burst) / 4;
}

void BPF_STRUCT_OPS(inter_quiescent, struct task_struct *p, u64 deq_flags)
{
	struct task_ctx *tc = ctx_of(p);

	if (!tc)
		return;
	/* the task went to sleep: fold its burst into the average */
	tc->avg_burst = (tc->avg_burst * 3 + tc->burst) / 4;
	tc->burst = 0;
}

s32 BPF_STRUCT_OPS_SLEEPABLE(inter_init)
{
	s32 ret = scx_bpf_create_dsq(HI_DSQ, -1);

	return ret ? ret : scx_bpf_create_dsq(LO_DSQ, -1);
}

void BPF_STRUCT_OPS(inter_exit, struct scx_exit_info *ei)
{
}

SEC(".struct_ops.link")
struct sched_ext_ops interactive_ops = {
	.select_cpu = (void *)inter_select_cpu,
	.enqueue = (void *)inter_enqueue,
	.dispatch = (void *)inter_dispatch,
	.running = (void *)inter_running,
	.stopping = (void *)inter_stopping,
	.quiescent = (void *)inter_quiescent,
	.init = (void *)inter_init,
	.exit = (void *)inter_exit,
	.timeout_ms = 5000,
	.name = "aios_interactive",
};
