/* corpus: HASH map lookup used without a NULL check (expected: rejected at kernel_verifier) */
#include "aios_scx.h"

char _license[] SEC("license") = "GPL";

#define SHARED_DSQ 0
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, u32);
	__type(value, u64);
} counts SEC(".maps");

s32 BPF_STRUCT_OPS(b_select_cpu, struct task_struct *p, s32 prev_cpu, u64 wake_flags)
{
	bool is_idle = false;
	s32 cpu = scx_bpf_select_cpu_dfl(p, prev_cpu, wake_flags, &is_idle);

	if (is_idle)
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, SCX_SLICE_DFL, 0);
	return cpu;
}

void BPF_STRUCT_OPS(b_enqueue, struct task_struct *p, u64 enq_flags)
{
	u32 key = p->pid & 63;
	u64 *c = bpf_map_lookup_elem(&counts, &key);

	*c += 1;
	scx_bpf_dsq_insert(p, SHARED_DSQ, SCX_SLICE_DFL, enq_flags);
}

void BPF_STRUCT_OPS(b_dispatch, s32 cpu, struct task_struct *prev)
{
	scx_bpf_dsq_move_to_local(SHARED_DSQ);
}

s32 BPF_STRUCT_OPS_SLEEPABLE(b_init)
{
	return scx_bpf_create_dsq(SHARED_DSQ, -1);
}

SEC(".struct_ops.link")
struct sched_ext_ops broken_ops = {
	.select_cpu = (void *)b_select_cpu,
	.enqueue = (void *)b_enqueue,
	.dispatch = (void *)b_dispatch,
	.init = (void *)b_init,
	.name = "broken",
};
