/* SPDX-License-Identifier: GPL-2.0 */
/*
 * aios_interactive - latency-critical / interactive boost.
 *
 * Policy: one queue ordered by virtual time (runtime divided by weight, as in
 * a fair scheduler). For each task we also keep a moving average of how long
 * it runs between sleeps (its burst). Tasks whose average burst is below
 * burst_thresh_ns are interactive (they sleep often and run briefly: request
 * handlers, message passing, UI): when they wake they are placed boost_ns
 * ahead of the current virtual time, get a short slice, and if every CPU is
 * busy we preempt a CPU that runs a batch task (SCX_KICK_PREEMPT), so the
 * wake-up latency is about one context switch instead of a batch slice.
 * Batch tasks get long slices (fewer switches) and fair shares among
 * themselves. The boost is bounded, so batch work is never starved: a task
 * that stops sleeping loses interactive status within a few bursts.
 *
 * Tunables (.rodata):
 *   burst_thresh_ns      average burst below which a task is interactive (2 ms)
 *   boost_ns             virtual-time head start of a waking interactive task (20 ms)
 *   interactive_slice_ns slice for interactive tasks (default 2 ms)
 *   batch_slice_ns       slice for batch tasks (default 10 ms)
 */
#include "aios_scx.h"

char _license[] SEC("license") = "GPL";

const volatile u64 burst_thresh_ns = 2000000;
const volatile u64 boost_ns = 20000000;
const volatile u64 interactive_slice_ns = 2000000;
const volatile u64 batch_slice_ns = 10000000;

#define SHARED_DSQ 0
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

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_CPUS);
	__type(key, u32);
	__type(value, u32); /* 1 while a batch task runs on this CPU */
} running_batch SEC(".maps");

u64 vtime_now, nr_preempt_kicks;

static struct task_ctx *ctx_of(struct task_struct *p)
{
	return bpf_task_storage_get(&task_ctxs, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
}

static bool is_interactive(struct task_struct *p)
{
	struct task_ctx *tc = ctx_of(p);

	return tc && tc->avg_burst < burst_thresh_ns;
}

static void set_cpu_batch(s32 cpu, u32 batch)
{
	u32 key = cpu;
	u32 *rb = bpf_map_lookup_elem(&running_batch, &key);

	if (rb)
		*rb = batch;
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

/* Preempt a CPU running a batch task, preferring the task's previous CPU. */
static void preempt_batch_cpu(struct task_struct *p)
{
	s32 prev = scx_bpf_task_cpu(p);
	u32 nr = scx_bpf_nr_cpu_ids();
	u32 i;

	for (i = 0; i < MAX_CPUS && i < nr; i++) {
		u32 cpu = ((u32)prev + i) % nr;
		u32 *rb = bpf_map_lookup_elem(&running_batch, &cpu);

		if (rb && *rb && bpf_cpumask_test_cpu(cpu, p->cpus_ptr)) {
			__sync_fetch_and_add(&nr_preempt_kicks, 1);
			scx_bpf_kick_cpu(cpu, SCX_KICK_PREEMPT);
			return;
		}
	}
}

void BPF_STRUCT_OPS(inter_enqueue, struct task_struct *p, u64 enq_flags)
{
	u64 vtime = p->scx.dsq_vtime;

	if (is_interactive(p)) {
		/* wake ahead of the batch work, by a bounded head start */
		if ((s64)(vtime - (vtime_now - boost_ns)) > 0)
			vtime = vtime_now - boost_ns;
		scx_bpf_dsq_insert_vtime(p, SHARED_DSQ, interactive_slice_ns, vtime, enq_flags);
		preempt_batch_cpu(p);
		return;
	}
	if ((s64)(vtime - (vtime_now - batch_slice_ns)) < 0)
		vtime = vtime_now - batch_slice_ns; /* bounded sleeper credit */
	scx_bpf_dsq_insert_vtime(p, SHARED_DSQ, batch_slice_ns, vtime, enq_flags);
}

void BPF_STRUCT_OPS(inter_dispatch, s32 cpu, struct task_struct *prev)
{
	scx_bpf_dsq_move_to_local(SHARED_DSQ);
}

void BPF_STRUCT_OPS(inter_running, struct task_struct *p)
{
	struct task_ctx *tc = ctx_of(p);

	if (tc)
		tc->running_at = scx_bpf_now();
	if ((s64)(p->scx.dsq_vtime - vtime_now) > 0)
		vtime_now = p->scx.dsq_vtime;
	set_cpu_batch(scx_bpf_task_cpu(p), !is_interactive(p));
}

void BPF_STRUCT_OPS(inter_stopping, struct task_struct *p, bool runnable)
{
	struct task_ctx *tc = ctx_of(p);
	u64 weight = p->scx.weight ? p->scx.weight : 100;
	u64 used;

	set_cpu_batch(scx_bpf_task_cpu(p), 0);
	if (!tc || !tc->running_at)
		return;
	used = scx_bpf_now() - tc->running_at;
	p->scx.dsq_vtime += used * 100 / weight;
	tc->burst += used;
	/* a burst that is already long marks the task batch without waiting for it to sleep */
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

void BPF_STRUCT_OPS(inter_enable, struct task_struct *p)
{
	p->scx.dsq_vtime = vtime_now;
}

s32 BPF_STRUCT_OPS_SLEEPABLE(inter_init)
{
	return scx_bpf_create_dsq(SHARED_DSQ, -1);
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
	.enable = (void *)inter_enable,
	.init = (void *)inter_init,
	.exit = (void *)inter_exit,
	.timeout_ms = 5000,
	.name = "aios_interactive",
};
