"""Micro-VM tests: real qemu, the real guest kernel verifier, real sched_ext.

Kept to two boots: one probe boot, and one verification boot that batches a good
scheduler, a verifier rejection (NULL dereference of a HASH lookup) and a watchdog
stall.  Skipped only when the set-up cache is missing (`aios sched setup`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aios.sched_ext.setup import load_setup

pytestmark = [pytest.mark.vm, pytest.mark.slow]

GOOD = r'''
#include "aios_scx.h"
char _license[] SEC("license") = "GPL";
#define SHARED_DSQ 0
AIOS_TUNABLE(u64, slice_ns, 5000000);
u64 nr_enq, nr_disp;
void BPF_STRUCT_OPS(g_enqueue, struct task_struct *p, u64 enq_flags)
{ __sync_fetch_and_add(&nr_enq, 1); scx_bpf_dsq_insert(p, SHARED_DSQ, slice_ns, enq_flags); }
void BPF_STRUCT_OPS(g_dispatch, s32 cpu, struct task_struct *prev)
{ if (scx_bpf_dsq_move_to_local(SHARED_DSQ)) __sync_fetch_and_add(&nr_disp, 1); }
s32 BPF_STRUCT_OPS_SLEEPABLE(g_init) { return scx_bpf_create_dsq(SHARED_DSQ, -1); }
SCX_OPS_DEFINE(g_ops, .enqueue = (void *)g_enqueue, .dispatch = (void *)g_dispatch,
    .init = (void *)g_init, .name = "gfifo");
'''

NULLDEREF = r'''
#include "aios_scx.h"
char _license[] SEC("license") = "GPL";
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 16); __type(key, u32); __type(value, u64); } m SEC(".maps");
void BPF_STRUCT_OPS(nd_enqueue, struct task_struct *p, u64 enq_flags)
{ u32 k = 1; u64 *v = bpf_map_lookup_elem(&m, &k); *v += 1;
  scx_bpf_dsq_insert(p, SCX_DSQ_GLOBAL, SCX_SLICE_DFL, enq_flags); }
SCX_OPS_DEFINE(nd_ops, .enqueue = (void *)nd_enqueue, .name = "nd");
'''

STALL = r'''
#include "aios_scx.h"
char _license[] SEC("license") = "GPL";
/* inserts into a DSQ nobody ever consumes: tasks never run */
void BPF_STRUCT_OPS(st_enqueue, struct task_struct *p, u64 enq_flags)
{ scx_bpf_dsq_insert(p, 1234, SCX_SLICE_DFL, enq_flags); }
s32 BPF_STRUCT_OPS_SLEEPABLE(st_init) { return scx_bpf_create_dsq(1234, -1); }
SCX_OPS_DEFINE(st_ops, .enqueue = (void *)st_enqueue, .init = (void *)st_init, .name = "stall");
'''


@pytest.fixture(scope="module")
def setup_info():
    info = load_setup()
    if info is None:
        pytest.skip("no sched_ext cache: run `aios sched setup` (fetches the guest kernel once)")
    return info


def test_probe_boot(setup_info):
    from aios.sched_ext.vm import MicroVM

    res = MicroVM(setup_info).run(
        'aios_result "{\\"kind\\":\\"p\\",\\"state\\":\\"$(cat /sys/kernel/sched_ext/state)\\"}"\n'
        "bpftool version | head -1\nexit 7\n", files={"/aios/data/x.txt": b"payload"})
    assert res.booted and res.exit_code == 7, (res.describe_failure(), res.console[-2000:])
    assert res.kernel_problem is None, res.kernel_problem
    assert res.result("p") == {"kind": "p", "state": "disabled"}
    assert res.guest_kernel == setup_info.kernel_release and res.guest_cpus == 2
    assert "bpftool v" in res.output


def test_verify_batch_good_reject_stall(setup_info, tmp_path):
    from aios.sched_ext.verifier import verify_many

    paths = []
    for name, text in (("good", GOOD), ("nullderef", NULLDEREF), ("stall", STALL)):
        p = Path(tmp_path) / f"{name}.bpf.c"
        p.write_text(text)
        paths.append(p)
    good, bad, stall = verify_many(paths, setup=setup_info, watchdog_ms=4000)

    assert good.ok, good.report()
    assert good.ops_name == "gfifo"
    assert good.facts["counters"]["nr_enq"] > 0 and good.facts["counters"]["nr_disp"] > 0
    assert good.facts["vm"]["batch"] == 3

    assert bad.failed_stage == "kernel_verifier", bad.report()
    assert "map_value_or_null" in bad.reason + "\n".join(bad.verdict("kernel_verifier").details)

    assert stall.failed_stage == "dynamic", stall.report()
    assert "watchdog" in stall.reason
