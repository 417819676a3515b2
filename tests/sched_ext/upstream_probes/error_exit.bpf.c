#include <scx/common.bpf.h>
char _license[] SEC("license") = "GPL";
UEI_DEFINE(uei);
u64 nr_enq;
void BPF_STRUCT_OPS(ee_enqueue, struct task_struct *p, u64 enq_flags)
{
	u64 n = __sync_fetch_and_add(&nr_enq, 1);
	if (n == 50)
		scx_bpf_error("boom after %llu enqueues", n);
	scx_bpf_dsq_insert(p, SCX_DSQ_GLOBAL, SCX_SLICE_DFL, enq_flags);
}
void BPF_STRUCT_OPS(ee_exit, struct scx_exit_info *ei) { UEI_RECORD(uei, ei); }
SCX_OPS_DEFINE(ee_ops, .enqueue = (void *)ee_enqueue, .exit = (void *)ee_exit, .name = "error_exit");
