"""Upstream sched_ext programs (the kernel's tools/sched_ext) through aios's toolchain.

Fast tests (no boot): the linux-source package naming, the binary BTF enum reader against the
cached guest kernel, section resizing and the reserved-name fix on real objects, the loader
replay (``prepare.plan_load``) on the kernel's own loaders, the include rules, and the host-side
refusals (scx_userland, scx_pair, a header we do not have, a tunable we cannot infer).

Provenance (no boot): the kernel's scx_qmap passes the static stage under the upstream rule set
(inline asm, bpf_printk allowed), while a changed copy, a doctored header or a model-written program
with the same constructs is refused.

One VM boot (``test_upstream_in_vm``) takes scx_simple, scx_central, scx_flatcg, scx_qmap and three
probes through all four stages: a scheduler that only dispatches to ``SCX_DSQ_LOCAL`` (it is ejected if
the enum globals stay 0, which its negative control shows by leaving them 0), and one that calls
``scx_bpf_error`` (its exit record must come back decoded).  Skipped only without the set-up cache
or without the kernel's sched_ext tree in it.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from aios.sched_ext.setup import load_setup
from aios.sched_ext.setup.host_tools import clang_major

PROBES = Path(__file__).resolve().parent / "upstream_probes"


@pytest.fixture(scope="module")
def setup_info():
    info = load_setup()
    if info is None:
        pytest.skip("no sched_ext cache: run `aios sched setup`")
    if info.scx_include is None:
        pytest.skip(f"no kernel sched_ext tree in the cache ({info.scx_missing or 'run `aios sched setup`'})")
    return info


def _example(info, name: str) -> Path:
    return info.scx_dir / f"{name}.bpf.c"


# ------------------------------------------------------------------ no set-up needed


def test_source_package_name():
    from aios.sched_ext.setup.info import SetupError
    from aios.sched_ext.setup.kernel_source import source_package

    assert source_package("7.2.13+deb14-cloud-amd64") == "linux-source-7.2"
    assert source_package("6.12.9-amd64") == "linux-source-6.12"
    with pytest.raises(SetupError):
        source_package("cloud")


def test_cli_set_parsing():
    from aios.sched_ext.cli import _overrides

    assert _overrides(["nr_cpus=4", "slice_ns=0x100", "fifo_sched=true"]) == {
        "nr_cpus": 4, "slice_ns": 256, "fifo_sched": 1}
    for bad in (["nr_cpus"], ["x=abc"], ["1x=3"]):
        with pytest.raises(ValueError):
            _overrides(bad)


def test_include_rules(tmp_path):
    from aios.sched_ext.checks import check_source

    (tmp_path / "mine.h").write_text("#define X 1\n")
    src = '#include <scx/common.bpf.h>\n#include "mine.h"\nchar _license[] SEC("license") = "GPL";\n'
    assert not [f for f in check_source(src, [tmp_path]) if f.code == "include"]
    # the same local header without its directory, a system header and an escape are refused
    assert [f for f in check_source(src, []) if f.code == "include"]
    for inc in ("<stdio.h>", '"../mine.h"', '"/etc/passwd"'):
        bad = f"#include {inc}\n" + src
        assert [f for f in check_source(bad, [tmp_path]) if f.code == "include" and f.line == 1], inc


def test_directives_that_read_outside_are_refused_before_compiling(tmp_path):
    """clang reads an included file before any check runs and quotes it in its errors: an absolute or
    '..' include, one built by a macro, #embed, #include_next and #import never reach clang."""
    from aios.sched_ext.build import compile_bpf

    secret = tmp_path / "secret" / "token.h"
    secret.parent.mkdir()
    secret.write_text("SECRET_TOKEN_4242 leaked\n")
    (tmp_path / "src").mkdir()
    cases = {
        "abs": f'#include "{secret}"\n',
        "dotdot": '#include "../secret/token.h"\n',
        "macro": f'#define F "{secret}"\n#include F\n',
        "embed": f'static const char x[] = {{\n#embed "{secret}"\n}};\n',
        "next": "#include_next <token.h>\n",
        "import": '  #  import "x.h"\n',
    }
    for name, body in cases.items():
        src = tmp_path / "src" / f"{name}.bpf.c"
        src.write_text('#include "aios_scx.h"\n' + body + 'char _license[] SEC("license") = "GPL";\n')
        b = compile_bpf(src)
        assert not b.ok and b.command == [], name                       # clang never ran
        assert "refused before compiling" in b.errors[0].message, (name, b.errors)
        assert "SECRET_TOKEN" not in b.summary() + b.stderr, name


# ------------------------------------------------------------------ with the cache, no boot


def test_btf_enums_of_guest_kernel(setup_info):
    from aios.sched_ext.btf import enum_values, read_btf

    enums = enum_values(read_btf(setup_info.vmlinux))
    assert enums["SCX_DSQ_LOCAL"].enum == "scx_dsq_id_flags"
    assert enums["SCX_DSQ_LOCAL"].value == (1 << 63) | 2          # SCX_DSQ_FLAG_BUILTIN | 2
    assert enums["SCX_DSQ_GLOBAL"].value == (1 << 63) | 1
    assert enums["SCX_EXIT_ERROR_BPF"].enum == "scx_exit_kind"
    assert enums["SCX_SLICE_DFL"].value > 0


def test_plan_from_the_kernels_own_loaders(setup_info):
    """scx_central's loader sets nr_cpu_ids from the CPU count and resizes two arrays by it."""
    from aios.sched_ext.build import compile_bpf
    from aios.sched_ext.elf import ElfObject
    from aios.sched_ext.prepare import Target, apply_to_elf, guest_target, plan_load

    b = compile_bpf(_example(setup_info, "scx_central"), setup=setup_info)
    assert b.ok, b.summary()
    obj = b.object_path.read_bytes()
    target = guest_target(setup_info, 3)
    plan = plan_load(b.source, obj, target)
    assert plan.ok, plan.problems
    assert plan.loader == "scx_central.c"
    assert plan.values["nr_cpu_ids"] == 3
    assert plan.values["slice_ns"] == target.enums["SCX_SLICE_DFL"].value
    assert plan.values["__SCX_DSQ_LOCAL"] == (1 << 63) | 2
    assert plan.resizes == {".data.cpu_gimme_task": 3, ".data.cpu_started_at": 24}
    out = ElfObject(apply_to_elf(obj, plan))
    sym = out.symbol("nr_cpu_ids", ".rodata")
    assert struct.unpack("<I", out.symbol_bytes(sym))[0] == 3
    assert out.section(".data.cpu_started_at").size == 24 and out.symbol("cpu_started_at").size == 24
    assert ElfObject(obj).symbol("nr_cpu_ids").value == sym.value   # nothing else moved
    # an override wins, and a name the object lacks is a problem, not a silent no-op
    plan2 = plan_load(b.source, obj, Target("k", 2, target.enums), {"nr_cpu_ids": 1, "no_such": 5})
    assert plan2.values["nr_cpu_ids"] == 1 and plan2.resizes[".data.cpu_started_at"] == 8
    assert any("no_such" in p for p in plan2.problems)


def test_reserved_kfunc_names_keep_their_btf(setup_info):
    """clang 14 drops BTF for `__`-prefixed externs; the object must still name __scx_bpf_dsq_insert_vtime."""
    from aios.sched_ext.build import compile_bpf

    if "__scx_bpf_dsq_insert_vtime" not in setup_info.kfuncs:
        pytest.skip("this kernel has no __scx_bpf_dsq_insert_vtime")
    b = compile_bpf(_example(setup_info, "scx_simple"), setup=setup_info)
    assert b.ok, b.summary()
    import subprocess

    btf = subprocess.run(["bpftool", "btf", "dump", "file", str(b.object_path)], capture_output=True, text=True).stdout
    assert "FUNC '__scx_bpf_dsq_insert_vtime'" in btf
    assert "Zzscx" not in btf


def test_host_side_refusals(setup_info, tmp_path):
    """Each a one-line reason: a user-space scheduler, a loader we cannot replay, a missing header,
    a tunable we cannot infer, a program too big for clang 14's stack."""
    from aios.sched_ext.verifier import verify_many

    missing = tmp_path / "missing_header.bpf.c"
    missing.write_text('#include <scx/common.bpf.h>\n#include <scx/no_such_header.h>\n'
                       'char _license[] SEC("license") = "GPL";\n')
    tun = tmp_path / "tunable.bpf.c"
    tun.write_text((PROBES / "enum_local.bpf.c").read_text().replace('"enum_local"', '"tunable"')
                   + "const volatile u32 magic = 1;\n")
    (tmp_path / "tunable.c").write_text("int main(void) { skel = SCX_OPS_OPEN(el_ops, tunable);\n"
                                        "skel->rodata->magic = read_magic_from(\"/etc/magic\");\n"
                                        "SCX_OPS_LOAD(skel, el_ops, tunable, uei); }\n")
    userland, pair, miss, tune = verify_many(
        [_example(setup_info, "scx_userland"), _example(setup_info, "scx_pair"), missing, tun], setup=setup_info,
        stop_after="static")
    assert userland.failed_stage == "static" and "user-space part" in userland.reason, userland.report()
    assert pair.failed_stage == "static" and "cannot replay" in pair.reason, pair.report()
    assert miss.failed_stage == "compile" and "no_such_header.h" in miss.reason, miss.report()
    assert "not among the kernel's sched_ext headers" in miss.reason
    assert tune.failed_stage == "static" and "magic" in tune.reason and "--set magic=" in tune.reason, tune.report()
    # --set supplies the tunable: the same program then passes the host stages
    ok = verify_many([tun], setup=setup_info, stop_after="static", overrides={"magic": 7})[0]
    assert ok.ok and ok.facts["load_plan"]["tunables"]["magic"] == 7, ok.report()


def test_provenance_selects_the_rule_set(setup_info, tmp_path):
    """The kernel's own scx_qmap (inline asm, bpf_printk) passes the static stage as ``upstream``; the same
    constructs anywhere else, or the same file built with one header changed, get the strict policy."""
    import shutil

    from aios.sched_ext.verifier import verify_many

    qmap = _example(setup_info, "scx_qmap")
    # a byte-for-byte copy elsewhere, with the kernel's own header next to it: still the kernel's bytes
    same = tmp_path / "same"
    same.mkdir()
    shutil.copy(qmap, same)
    shutil.copy(qmap.with_name("scx_qmap.h"), same)
    # the same source with a doctored scx_qmap.h beside it (the compiler reads it before the tree's)
    doctored = tmp_path / "doctored"
    doctored.mkdir()
    shutil.copy(qmap, doctored)
    (doctored / "scx_qmap.h").write_text(qmap.with_name("scx_qmap.h").read_text() + "/* changed */\n")
    # one byte changed in the source itself
    edited = tmp_path / "edited"
    edited.mkdir()
    shutil.copy(qmap.with_name("scx_qmap.h"), edited)
    (edited / "scx_qmap.bpf.c").write_text(qmap.read_text() + "\n")
    # a model-written program (the enum probe) with one inline asm statement
    asm = tmp_path / "asm_probe.bpf.c"
    asm.write_text((PROBES / "enum_local.bpf.c").read_text().replace(
        "char _license", 'static __attribute__((unused)) void touch(void) { asm volatile("" ::: "r0"); }\n'
        "char _license", 1))
    up, copy, doc, edit, model = verify_many([qmap, same / "scx_qmap.bpf.c", doctored / "scx_qmap.bpf.c",
                                              edited / "scx_qmap.bpf.c", asm], setup=setup_info, stop_after="static")

    for r in (up, copy):
        assert r.ok, r.report()
        prov = r.facts["provenance"]
        assert prov["origin"] == "upstream" and prov["program"] == "scx_qmap.bpf.c", prov
        assert prov["package"] == setup_info.scx_source
        static = r.verdict("static")
        assert "upstream program" in static.reason and "finding(s) allowed" in static.reason, r.report()
        assert any("[inline-asm]" in d and d.startswith("allowed:") for d in static.details), static.details
    assert up.facts["load_plan"]["tunables"]["max_tasks"] == 16384     # from scx_qmap.c, as its loader sets it

    for r, why in ((doc, "header"), (edit, "not byte-for-byte"), (model, "not byte-for-byte")):
        assert r.failed_stage == "static" and "inline assembly" in r.reason, r.report()
        assert r.facts["provenance"]["origin"] == "submitted" and why in r.facts["provenance"]["reason"], r.facts
    # printk is refused for submitted code too (object level: the helper call)
    assert any("[debug-print]" in d and d.startswith("error:") for d in edit.verdict("static").details), edit.report()


def test_a_modified_tree_is_not_upstream(setup_info, tmp_path):
    """The manifest is the record of what the package held: a tree changed after extraction stops counting."""
    import shutil

    from aios.sched_ext.build import compile_bpf
    from aios.sched_ext.provenance import provenance_of
    from aios.sched_ext.setup.kernel_source import MANIFEST, read_manifest, write_manifest

    tree = tmp_path / "sched_ext"
    shutil.copytree(setup_info.scx_dir, tree)
    (tree / MANIFEST).unlink(missing_ok=True)
    write_manifest(tree)
    info = setup_info.model_copy(update={"scx_dir": tree})
    assert read_manifest(tree)["scx_simple.bpf.c"]
    pristine = tmp_path / "scx_simple.bpf.c"
    shutil.copy(tree / "scx_simple.bpf.c", pristine)
    b = compile_bpf(pristine, setup=info)
    assert b.ok and provenance_of(b, info).origin == "upstream"
    (tree / "scx_simple.bpf.c").write_text((tree / "scx_simple.bpf.c").read_text() + "\n")
    prov = provenance_of(b, info)
    assert prov.origin == "submitted" and "no longer matches" in prov.reason, prov


# ------------------------------------------------------------------ one verification (two boots)


@pytest.fixture(scope="module")
def upstream_verdicts(setup_info):
    """Four kernel examples and three probes through all four stages, in two boots side by side
    (a TCG guest runs on one host core; each program's verdict does not depend on its boot-mates)."""
    from aios.sched_ext.verifier import verify_many

    sources = [_example(setup_info, n) for n in ("scx_simple", "scx_central", "scx_flatcg", "scx_qmap")]
    sources += [PROBES / "enum_local.bpf.c", PROBES / "zero" / "enum_zero.bpf.c", PROBES / "error_exit.bpf.c"]
    # none of them stalls: a long watchdog keeps a heavily loaded host (TCG) from ejecting them
    return verify_many(sources, setup=setup_info, watchdog_ms=15000, boots=2)


@pytest.mark.vm
@pytest.mark.slow
def test_upstream_in_vm(setup_info, upstream_verdicts):
    simple, central, flatcg, qmap, local, zero, err = upstream_verdicts

    # scx_qmap needs clang >= 22 (see host_tools.best_clang): 19 miscompiles its arena pointer and the kernel
    # verifier refuses the object. A host without clang-22 (scripts/install-system.sh installs it where the
    # suite has it) must show exactly that, not a pass and not another failure.
    clang = clang_major(setup_info.clang)
    if clang < 22:
        assert qmap.failed_stage == "kernel_verifier", qmap.report()
    # scx_central re-arms a CPU-pinned bpf_timer from its own callback. On the 7.x kernels (bpf_async timer
    # rework; sched_ext now runs ops.init() from a helper kthread on any CPU) that re-arm intermittently
    # returns -EINVAL and the scheduler calls scx_bpf_error itself: seen once in 13 fresh-clone runs, on a
    # heavily loaded host. Rejecting a scheduler that errors out is the verifier being right, so central
    # must either pass every stage or be ejected for exactly that upstream error at the dynamic stage.
    if not central.ok:
        assert central.failed_stage == "dynamic", central.report()
        assert "bpf_timer_start failed (-22)" in central.report(), central.report()
    passing = tuple(r for r in ((simple, central, flatcg, qmap) if clang >= 22 else (simple, central, flatcg)) if r is not central or central.ok)
    for r in passing:
        assert r.ok, r.report()
        assert r.facts["smoke"]["spinners"] == 4, r.facts["smoke"]
        assert r.facts["load_plan"]["enums_set"] > 20, r.facts["load_plan"]
        assert r.facts["provenance"]["origin"] == "upstream", r.facts["provenance"]
    names = ["simple", "central", "flatcg", "qmap"][: 4 if clang >= 22 else 3]
    assert [r.ops_name for r in passing] == [n for n in names if n != "central" or central.ok]
    if clang >= 22:  # scx_qmap: the CPU-id ops (sched_ext_ops_cid) with its arena, loaded and enabled
        assert qmap.verdict("kernel_verifier").reason == "loaded (qmap_ops)", qmap.report()
    assert central.facts["load_plan"]["tunables"]["nr_cpu_ids"] == 2      # the VM's CPUs, as its loader would
    assert central.facts["load_plan"]["resized"] == {".data.cpu_gimme_task": 2, ".data.cpu_started_at": 16}
    assert flatcg.facts["load_plan"]["tunables"]["nr_cpus"] == 2

    # the enum globals hold the guest kernel's values, and the scheduler that depends on them works
    assert local.ok, local.report()
    c = local.facts["counters"]
    assert c["seen_local"] == (1 << 63) | 2 and c["nr_local"] > 0, c
    # left at 0 (what bpftool alone loads), the same scheduler inserts into DSQ 0 and is ejected
    assert zero.failed_stage in ("kernel_verifier", "dynamic"), zero.report()
    assert zero.facts["load_plan"]["tunables"]["__SCX_DSQ_LOCAL"] == 0

    # scx_bpf_error: the verdict carries the decoded exit record
    assert err.failed_stage == "dynamic", err.report()
    rec = err.facts["exit_record"]
    assert rec["kind_name"] == "SCX_EXIT_ERROR_BPF" and "boom after 50 enqueues" in rec["msg"], rec
    assert "SCX_EXIT_ERROR_BPF" in err.reason and "boom after 50" in err.reason


@pytest.mark.vm
@pytest.mark.slow
def test_host_mode_loader_in_vm(setup_info, upstream_verdicts):
    """The host-mode loader (libbpf via ctypes, enums from the running kernel's BTF) proved in the guest.

    This machine's kernel has no sched_ext, so the same Python code runs inside the micro-VM with a
    CPython, pydantic and libbpf from the guest kernel's Debian suite, appended for this boot only.
    """
    import json

    from aios.sched_ext.setup import SetupError
    from aios.sched_ext.setup.python_guest import ensure_python_guest
    from aios.sched_ext.vm import MicroVM

    simple = upstream_verdicts[0]
    assert simple.ok, simple.report()
    try:
        archive = ensure_python_guest(setup_info)
    except SetupError as e:
        pytest.skip(f"cannot build the guest Python: {e}")
    pkg = Path(__file__).resolve().parents[2] / "aios"
    files: dict[str, bytes | Path] = {"/aios/py/aios/__init__.py": b"", "/aios/py/aios/cache.py": pkg / "cache.py"}
    for f in (pkg / "sched_ext").rglob("*.py"):   # the toolchain's own code, unchanged
        files[f"/aios/py/aios/sched_ext/{f.relative_to(pkg / 'sched_ext').as_posix()}"] = f
    files["/aios/py/hostmode_check.py"] = PROBES / "hostmode_check.py"
    files["/aios/obj/scx_simple.bpf.o"] = Path(simple.object_path)
    files["/aios/src/scx_simple.bpf.c"] = simple.source
    files["/aios/src/scx_simple.c"] = simple.source.with_name("scx_simple.c")
    files["/aios/verdict.json"] = json.dumps({"ok": simple.ok, "object_sha256": simple.facts["object_sha256"]})
    script = ("export PYTHONPATH=/aios/py PYTHONDONTWRITEBYTECODE=1 HOME=/tmp\n"
              "python3 /aios/py/hostmode_check.py /aios/obj/scx_simple.bpf.o /aios/src/scx_simple.bpf.c "
              "/aios/verdict.json > /tmp/hm.txt 2>&1; echo \"rc=$?\" >> /tmp/hm.txt\n"
              "dmesg | grep sched_ext >> /tmp/hm.txt\naios_emit hostmode /tmp/hm.txt\n")
    res = MicroVM(setup_info).run(script, files=files, archives=[archive], timeout_s=900)
    text = res.blobs.get("hostmode", "")
    line = next((ln for ln in text.splitlines() if ln.startswith("@@HOSTMODE ")), None)
    assert line is not None, (res.describe_failure(), text[-3000:], res.console[-1500:])
    out = json.loads(line.removeprefix("@@HOSTMODE "))
    # nothing unverified is loaded
    assert "unverified" in out["refused"]["unverified"], out["refused"]
    assert "differs from the object that was verified" in out["refused"]["other_bytes"], out["refused"]
    # loaded, watched and unloaded through /sys/kernel/sched_ext, initialized from this kernel's BTF
    assert out["before"]["state"] == "disabled"
    assert out["loaded"]["state"] == "enabled" and out["loaded"]["ops"] == "simple", out["loaded"]
    assert out["during"]["state"] == "enabled"
    assert out["plan"]["enums_set"] > 20 and out["plan"]["target"].endswith("2 CPUs"), out["plan"]
    assert out["after"]["state"] == "disabled" and out["after"]["enable_seq"] == out["loaded"]["enable_seq"]
    # the exit record: empty while it ran, "unregistered from user space" after unload
    assert out["exit_while_loaded"]["kind"] == 0
    assert out["exit_after_unload"]["kind"] == 64 and "unregistered" in out["exit_after_unload"]["reason"], out
    assert 'BPF scheduler "simple" enabled' in text and 'BPF scheduler "simple" disabled' in text


def test_upstream_entries_for_the_repository(setup_info, tmp_path):
    """The kernel's examples enter the policy repository as origin 'upstream', next to the seeds."""
    from aios.kernel.embedding import HashEmbedder
    from aios.sched_ext.repository import PolicyRepository, load_upstream_entries

    entries = load_upstream_entries(setup_info.scx_dir, {"scx_central": {"nr_cpu_ids": 2}})
    names = {e.name for e in entries}
    assert {"scx_simple", "scx_central", "scx_flatcg", "scx_qmap"} <= names
    central = next(e for e in entries if e.name == "scx_central")
    assert central.origin == "upstream" and "upstream" in central.tags
    assert central.source == (setup_info.scx_dir / "scx_central.bpf.c").read_text()
    assert central.tunables["nr_cpu_ids"].default == 2
    repo = PolicyRepository(tmp_path / "r", embedder=HashEmbedder(dim=64))
    seeds = len(repo)
    for e in entries:
        repo.add(e)
    assert len(repo) == seeds + len(entries) and len(repo.list(tag="upstream")) == len(entries)
    repo.close()
