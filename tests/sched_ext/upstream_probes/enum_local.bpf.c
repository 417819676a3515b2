/* Dispatches every task to SCX_DSQ_LOCAL and nothing else: if the enum globals were left 0, every insert
 * targets DSQ 0, which does not exist, and the kernel ejects the scheduler. */
#include <scx/common.bpf.h>
char _license[] SEC("license") = "GPL";
UEI_DEFINE(uei);
u64 nr_local, seen_local, seen_slice;
void BPF_STRUCT_OPS(el_enqueue, struct task_struct *p, u64 enq_flags)
{
	seen_local = SCX_DSQ_LOCAL;
	seen_slice = SCX_SLICE_DFL;
	__sync_fetch_and_add(&nr_local, 1);
	scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, SCX_SLICE_DFL, enq_flags);
}
void BPF_STRUCT_OPS(el_exit, struct scx_exit_info *ei) { UEI_RECORD(uei, ei); }
SCX_OPS_DEFINE(el_ops, .enqueue = (void *)el_enqueue, .exit = (void *)el_exit, .name = "enum_local");
