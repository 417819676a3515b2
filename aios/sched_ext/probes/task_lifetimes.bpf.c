/* SPDX-License-Identifier: GPL-2.0 */
/*
 * task_lifetimes.bpf.c - the profile's BPF collector: every task of the workload, however short-lived.
 *
 * Why: the summary tier samples /proc every 0.2 s, so a task that lives for a few milliseconds is
 * never seen. These tracepoints count every fork, exec, exit, switch and wake-up of the workload's
 * tasks (descendants of the process whose tgid is in `target`; everything when it is 0) and keep
 * log2 histograms of lifetime and CPU time of the tasks that exited. Only counters and histograms
 * leave the guest (the .bss map), never per-task records, so the dump stays small under TCG.
 *
 * Loaded by profile.py with `bpftool prog loadall … autoattach`; aios's own code, not a scheduler.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char _license[] SEC("license") = "GPL";

#define NR_BUCKETS 32      /* log2 of microseconds: bucket b holds [2^b, 2^(b+1)) us */
#define SHORT_US 10000     /* "short-lived": under 10 ms from fork to exit */
#define MAX_DEPTH 16

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u32);
} target SEC(".maps");

u64 nr_forks, nr_execs, nr_exits, nr_short, nr_switches, nr_wakeups, nr_vol_switches, nr_invol_switches;
u64 sum_lifetime_us, sum_runtime_us, max_lifetime_us;
u64 lifetime_hist[NR_BUCKETS], runtime_hist[NR_BUCKETS];

static __always_inline bool in_workload(struct task_struct *p)
{
	u32 key = 0, *want = bpf_map_lookup_elem(&target, &key);
	int i;

	if (!want || !*want)
		return true;
	for (i = 0; i < MAX_DEPTH && p; i++) {
		if (p->tgid == *want)
			return true;
		p = p->real_parent;
	}
	return false;
}

static __always_inline u32 log2_bucket(u64 v)
{
	u32 b = 0;
	int i;

	for (i = 0; i < NR_BUCKETS - 1; i++) {
		if (v < 2)
			break;
		v >>= 1;
		b++;
	}
	return b;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(col_fork, struct task_struct *parent, struct task_struct *child)
{
	if (in_workload(parent))
		__sync_fetch_and_add(&nr_forks, 1);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(col_exec, struct task_struct *p)
{
	if (in_workload(p))
		__sync_fetch_and_add(&nr_execs, 1);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(col_exit, struct task_struct *p)
{
	u64 life_us, run_us;
	u32 b;

	if (!in_workload(p))
		return 0;
	life_us = (bpf_ktime_get_ns() - p->start_time) / 1000;
	run_us = p->se.sum_exec_runtime / 1000;
	__sync_fetch_and_add(&nr_exits, 1);
	__sync_fetch_and_add(&sum_lifetime_us, life_us);
	__sync_fetch_and_add(&sum_runtime_us, run_us);
	__sync_fetch_and_add(&nr_vol_switches, p->nvcsw);
	__sync_fetch_and_add(&nr_invol_switches, p->nivcsw);
	if (life_us < SHORT_US)
		__sync_fetch_and_add(&nr_short, 1);
	if (life_us > max_lifetime_us)
		max_lifetime_us = life_us;
	b = log2_bucket(life_us);
	if (b < NR_BUCKETS)
		__sync_fetch_and_add(&lifetime_hist[b], 1);
	b = log2_bucket(run_us);
	if (b < NR_BUCKETS)
		__sync_fetch_and_add(&runtime_hist[b], 1);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(col_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	if (in_workload(next))
		__sync_fetch_and_add(&nr_switches, 1);
	return 0;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(col_wakeup, struct task_struct *p)
{
	if (in_workload(p))
		__sync_fetch_and_add(&nr_wakeups, 1);
	return 0;
}
