"""Fast tests of the sched_ext toolchain (no VM boot): build diagnostics, static checks,
ELF patching, bpftool JSON parsing, sched_ext state parsing, libbpf ctypes on the host.

They need the cached kernel headers from `aios sched setup` for compiling; without a cache
the compiling tests are skipped with the reason.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from aios.sched_ext import bpftool as bt
from aios.sched_ext.build import parse_diagnostics
from aios.sched_ext.checks import check_source
from aios.sched_ext.elf import ElfObject, patch_struct_ops_field, set_tunables
from aios.sched_ext.loader import classify_exit, parse_exits, parse_state, read_host_state, unexpected_exits
from aios.sched_ext.setup import kfunc_prototypes, load_setup, write_cpio
from aios.sched_ext.vm import parse_serial

GOOD = r'''
#include "aios_scx.h"
char _license[] SEC("license") = "GPL";
AIOS_TUNABLE(u64, slice_ns, 5000000);
u64 nr_enq;
void BPF_STRUCT_OPS(t_enqueue, struct task_struct *p, u64 enq_flags)
{
	__sync_fetch_and_add(&nr_enq, 1);
	scx_bpf_dsq_insert(p, SCX_DSQ_GLOBAL, slice_ns, enq_flags);
}
SCX_OPS_DEFINE(t_ops, .enqueue = (void *)t_enqueue, .name = "tsched");
'''


@pytest.fixture(scope="module")
def setup_info():
    info = load_setup()
    if info is None:
        pytest.skip("no sched_ext cache: run `aios sched setup`")
    return info


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------ pure parsing


def test_parse_diagnostics_structured():
    text = ("x.bpf.c:2:9: error: expected expression\nint x = ;\n        ^\n"
            "x.bpf.c:3:15: warning: unused variable 'y' [-Wunused-variable]\n")
    d = parse_diagnostics(text)
    assert [(x.line, x.column, x.severity) for x in d] == [(2, 9, "error"), (3, 15, "warning")]
    assert d[0].message == "expected expression" and d[0].snippet == "int x = ;"


def test_write_cpio_newc_roundtrip(tmp_path):
    import gzip
    import subprocess

    data = write_cpio([("a", stat.S_IFDIR | 0o755, b""), ("a/f.sh", stat.S_IFREG | 0o755, "echo hi\n"),
                       ("a/l", stat.S_IFLNK | 0o777, "f.sh")])
    raw = gzip.decompress(data)
    assert raw.startswith(b"070701") and b"TRAILER!!!" in raw and len(raw) % 512 == 0
    out = subprocess.run(["cpio", "-t"], input=raw, capture_output=True)
    assert out.stdout.decode().split() == ["a", "a/f.sh", "a/l"]


def test_parse_serial_results_blobs_and_markers():
    import base64

    blob = base64.b64encode(b"line1\nline2\n").decode()
    text = ("@@AIOS-BOOTED 7.2.13 ncpu=2\r\nhello\n@@AIOS-RESULT {\"kind\":\"x\",\"v\":1}\n"
            "@@AIOS-RESULT not json\n@@AIOS-BLOB-BEGIN log\n" + blob + "\n@@AIOS-BLOB-END log\n@@AIOS-EXIT 3\n")
    results, blobs, plain, info = parse_serial(text)
    assert results[0] == {"kind": "x", "v": 1} and results[1]["kind"] == "unparsed"
    assert blobs["log"] == "line1\nline2\n" and plain == "hello"
    assert info["exit"] == "3" and info["boot"].startswith("7.2.13")


def test_kfunc_prototypes_from_raw_btf():
    raw = """[1] INT 'long long unsigned int' size=8 bits_offset=0 nr_bits=64 encoding=(none)
[2] TYPEDEF 'u64' type_id=1
[3] STRUCT 'task_struct' size=100 vlen=0
[4] PTR '(anon)' type_id=3
[5] FUNC_PROTO '(anon)' ret_type_id=0 vlen=2
\t'p' type_id=4
\t'dsq_id' type_id=2
[6] FUNC 'scx_bpf_dsq_insert' type_id=5 linkage=static
[7] DECL_TAG 'bpf_kfunc' type_id=6 component_idx=-1
[8] INT '_Bool' size=1 bits_offset=0 nr_bits=8 encoding=BOOL
[9] FUNC_PROTO '(anon)' ret_type_id=8 vlen=1
\t'p' type_id=4
[10] FUNC 'scx_bpf_dsq_insert___v2' type_id=9 linkage=static
[11] DECL_TAG 'bpf_kfunc' type_id=10 component_idx=-1
[12] FUNC 'not_a_kfunc' type_id=5 linkage=static
"""
    names, header = kfunc_prototypes(raw)
    assert names == ["scx_bpf_dsq_insert", "scx_bpf_dsq_insert___v2"]
    assert "extern void scx_bpf_dsq_insert(struct task_struct *p, u64 dsq_id) __ksym __weak;" in header
    # flavoured kernel names get one more flavour so libbpf resolves the real one
    assert "extern _Bool scx_bpf_dsq_insert___v2___aios(struct task_struct *p) __ksym __weak;" in header
    assert "#define AIOS_HAVE_scx_bpf_dsq_insert 1" in header and "not_a_kfunc" not in header


def test_bpftool_json_parsers():
    maps = bt.parse_maps('[{"id":3,"type":"array","name":"s.rodata","bytes_key":4,"bytes_value":8,'
                         '"max_entries":1,"frozen":1,"btf_id":13},{"id":6,"type":"struct_ops","name":"x_ops"}]')
    assert [m.type for m in maps] == ["array", "struct_ops"] and maps[0].frozen == 1
    progs = bt.parse_progs('[{"id":9,"type":"struct_ops","name":"x_enqueue","tag":"ab","bytes_xlated":96,'
                           '"run_cnt":5,"map_ids":[3]}]')
    assert progs[0].xlated_bytes == 96 and progs[0].map_ids == [3]
    dump = bt.parse_map_dump('[{"key":["0x00"],"formatted":{"value":{".bss":[{"nr_enq":52},{"nr_disp":7}]}}}]')
    assert bt.datasec_values(dump) == {"nr_enq": 52, "nr_disp": 7}
    ok = bt.parse_register("Registered sched_ext_ops minimal_ops map id 6 link id 1\n")
    assert ok.ok and ok.ops == ["minimal_ops"] and ok.link_ids == [1]
    log = ("libbpf: prog 'nd_enqueue': BPF program load failed: Permission denied\n"
           "libbpf: prog 'nd_enqueue': -- BEGIN PROG LOAD LOG --\n0: R1=ctx() R10=fp0\n"
           "8: (85) call bpf_map_lookup_elem#1    ; R0=map_value_or_null(id=1)\n9: (79) r1 = *(u64 *)(r0 +0)\n"
           "R0 invalid mem access 'map_value_or_null'\nprocessed 9 insns (limit 1000000)\n"
           "-- END PROG LOAD LOG --\nError: failed to load BPF object file\n")
    bad = bt.parse_register(log)
    assert not bad.ok and bad.failed_program == "nd_enqueue"
    assert any("invalid mem access" in ln for ln in bt.essential_verifier_lines(bad.verifier_log))
    assert bt.guest_register("/aios/a.bpf.o", "/sys/fs/bpf/x").endswith("/aios/a.bpf.o /sys/fs/bpf/x")


def test_state_and_exit_parsing(tmp_path):
    st = parse_state("available=1\nstate=enabled\nops=minimal\nenable_seq=3\nevent.SCX_EV_DISPATCH_KEEP_LAST=569\n")
    assert st.enabled and st.ops == "minimal" and st.enable_seq == 3 and st.events["SCX_EV_DISPATCH_KEEP_LAST"] == 569
    dmesg = ('[   58.9] sched_ext: BPF scheduler "stall" enabled\n'
             '[   65.1] sched_ext: BPF scheduler "stall" disabled (runnable task stall)\n'
             '[   65.1] sched_ext: stall: kworker/0:1[11] failed to run for 6.556s\n'
             '[   70.0] sched_ext: BPF scheduler "ok" disabled (unregistered from user space)\n')
    ev = parse_exits(dmesg)
    assert [e.action for e in ev] == ["enabled", "disabled", "disabled"]
    assert ev[1].kind == "watchdog" and "failed to run" in ev[1].detail[0]
    assert [e.name for e in unexpected_exits(dmesg)] == ["stall"]
    assert classify_exit("scx_bpf_error (boom)") == "error_bpf"
    fake = tmp_path / "scx"
    (fake / "root").mkdir(parents=True)
    (fake / "state").write_text("enabled\n")
    (fake / "root" / "ops").write_text("fifo\n")
    assert read_host_state(fake).ops == "fifo" and not read_host_state(tmp_path / "none").available


def test_source_checks_catch_loops_includes_and_forbidden():
    src = GOOD + r'''
#include <linux/sched.h>
int f(int n) { int s = 0; while (1) { s++; } for (int i = 0; i < n; i++) s++; for (int i = 0; i < 64; i++) s++;
  bpf_for(s, 0, 10) {} bpf_probe_write_user(0, 0, 0); asm volatile("r0 = 0"); return s; }
SEC("kprobe/do_exit") int k(void *ctx) { return 0; }
'''
    codes = [(f.code, f.severity) for f in check_source(src)]
    assert ("include", "error") in codes and ("inline-asm", "error") in codes
    assert ("forbidden-helper", "error") in codes and ("program-type", "error") in codes
    assert codes.count(("unbounded-loop", "error")) == 2  # while(1) and i < n; not i < 64, not bpf_for
    assert not [f for f in check_source(GOOD) if f.severity == "error"]


# ------------------------------------------------------------------ needs the cached headers


def test_compile_ok_and_object_checks(setup_info, tmp_path):
    from aios.sched_ext.build import compile_bpf
    from aios.sched_ext.checks import run_checks
    from aios.sched_ext.elf import read_struct_ops_name

    src = _write(tmp_path, "t.bpf.c", GOOD)
    b = compile_bpf(src, setup=setup_info)
    assert b.ok, b.summary()
    obj = b.object_path.read_bytes()
    rep = run_checks(GOOD, obj, setup_info)
    assert rep.ok, [str(f) for f in rep.findings]
    assert rep.ops_names == {"t_ops": "tsched"} and "scx_bpf_dsq_insert" in rep.kfuncs_used
    assert rep.tunables == ["slice_ns"]
    patched = patch_struct_ops_field(set_tunables(obj, {"slice_ns": 1234}), "timeout_ms", 3000, setup_info)
    elf = ElfObject(patched)
    assert int.from_bytes(elf.symbol_bytes(elf.symbol("slice_ns")), "little") == 1234
    assert read_struct_ops_name(patched, setup_info) == {"t_ops": "tsched"}
    with pytest.raises(KeyError):
        set_tunables(obj, {"nr_enq": 1})  # .bss, not a tunable


def test_compile_errors_are_structured(setup_info, tmp_path):
    from aios.sched_ext.build import compile_bpf

    src = _write(tmp_path, "bad.bpf.c", '#include "aios_scx.h"\nint x = ;\nvoid f(void) { scx_bpf_nope(1); }\n')
    b = compile_bpf(src, setup=setup_info)
    assert not b.ok and b.object_path is None
    assert [(e.line, e.column) for e in b.errors] == [(2, 9), (3, 16)]
    assert "scx_bpf_nope" in b.errors[1].message


def test_old_kfunc_spellings_compile(setup_info, tmp_path):
    """Pre-6.13 names map onto the target kernel's via aios_scx.h (checked against its BTF)."""
    from aios.sched_ext.build import compile_bpf
    from aios.sched_ext.checks import run_checks

    text = GOOD.replace("scx_bpf_dsq_insert(", "scx_bpf_dispatch(") + r'''
void BPF_STRUCT_OPS(t_dispatch, s32 cpu, struct task_struct *prev) { scx_bpf_consume(SCX_DSQ_GLOBAL); }
'''
    b = compile_bpf(_write(tmp_path, "old.bpf.c", text), setup=setup_info)
    assert b.ok, b.summary()
    rep = run_checks(text, b.object_path.read_bytes(), setup_info)
    assert rep.ok and all(k in setup_info.kfuncs for k in rep.kfuncs_used if k.startswith("scx_"))


def test_static_stage_rejects_unknown_kfunc_and_missing_name(setup_info, tmp_path):
    from aios.sched_ext.build import compile_bpf
    from aios.sched_ext.checks import run_checks

    text = GOOD.replace('.name = "tsched"', '.flags = 0') + \
        "extern void scx_bpf_teleport(struct task_struct *p) __ksym;\n" \
        "void BPF_STRUCT_OPS(t_running, struct task_struct *p) { scx_bpf_teleport(p); }\n"
    b = compile_bpf(_write(tmp_path, "u.bpf.c", text), setup=setup_info)
    assert b.ok, b.summary()
    codes = {f.code for f in run_checks(text, b.object_path.read_bytes(), setup_info).errors}
    assert {"unknown-kfunc", "ops-name"} <= codes


def test_verifier_host_stages_only(setup_info, tmp_path):
    from aios.sched_ext.verifier import verify

    r = verify(_write(tmp_path, "s.bpf.c", GOOD), setup=setup_info, stop_after="static")
    assert r.ok and [v.stage for v in r.stages if not v.skipped] == ["compile", "static"]
    bad = verify(_write(tmp_path, "l.bpf.c", GOOD.replace("u64 nr_enq;", "u64 nr_enq;\nint g(int n, int m){while(n < m){n++;}return n;}")),
                 setup=setup_info)
    assert not bad.ok and bad.failed_stage == "static" and "no constant bound" in bad.reason


# ------------------------------------------------------------------ libbpf ctypes on this host


def test_libbpf_open_inspect_and_host_refusal(setup_info, tmp_path):
    from aios.sched_ext.build import compile_bpf
    from aios.sched_ext.libbpf import BpfObject, HostModeRefused, HostScheduler, Libbpf, host_preflight

    b = compile_bpf(_write(tmp_path, "h.bpf.c", GOOD), setup=setup_info)
    lib = Libbpf()
    with BpfObject.open(b.object_path, lib) as obj:
        names = {m.name.split(".", 1)[-1] for m in obj.maps()}
        assert {"rodata", "bss"} <= names
        assert [p.section for p in obj.programs()] == ["struct_ops/t_enqueue"]
        assert int.from_bytes(obj.initial_value(".rodata")[:8], "little") == 5000000
    if not Path("/sys/kernel/sched_ext").is_dir():
        with pytest.raises(HostModeRefused, match="no sched_ext"):
            host_preflight()
    # unverified objects are refused before anything else is looked at
    with pytest.raises(HostModeRefused, match="unverified"):
        HostScheduler(b.object_path, verified=None).load()


def test_host_preflight_refusals(tmp_path):
    from aios.sched_ext.libbpf import HostModeRefused, host_preflight

    fake = tmp_path / "scx"
    (fake / "root").mkdir(parents=True)
    (fake / "state").write_text("enabled\n")
    (fake / "root" / "ops").write_text("other\n")
    with pytest.raises(HostModeRefused, match="root"):
        host_preflight(fake, euid=1000)
    with pytest.raises(HostModeRefused, match="another sched_ext scheduler is attached"):
        host_preflight(fake, euid=0)
    (fake / "state").write_text("disabled\n")
    assert host_preflight(fake, euid=0).state == "disabled"


def test_cli_parses(tmp_path):
    import argparse

    from aios.sched_ext.cli import add_subcommands

    p = argparse.ArgumentParser()
    add_subcommands(p.add_subparsers(dest="c"))
    a = p.parse_args(["verify", "x.bpf.c", "--stop-after", "static"])
    assert a.files == ["x.bpf.c"] and a.func.__name__ == "cmd_verify"
    a = p.parse_args(["bench", "x.bpf.c", "--workload", "batch", "--reps", "2"])
    assert a.workload == "batch" and a.reps == 2
