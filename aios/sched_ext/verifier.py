"""Staged execution verifier for sched_ext schedulers: compile → static → kernel verifier → dynamic.

Why staged: each stage is cheaper than the next and explains failures in its
own terms (a compiler diagnostic, a forbidden construct, the kernel
verifier's log, the kernel's exit reason), which is what the sched-agent
needs to repair a candidate.  Stages 3 and 4 share one micro-VM boot; several
schedulers can share one boot too (``verify_many``).  Nothing is ever loaded
on the host.

Stage 4 patches ``timeout_ms`` (the sched_ext watchdog) in the object to a few
seconds, so a scheduler that stalls tasks is ejected by the kernel quickly
and reported as such; the guest then falls back to EEVDF and keeps running.

Public API::

    verify(source, *, setup=None, vm=None, watchdog_ms=5000, stop_after=None) -> VerifyResult
    verify_many(sources, *, setup=None, vm=None, watchdog_ms=5000, boots=1) -> list[VerifyResult]
    STAGES = ("compile", "static", "kernel_verifier", "dynamic")
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from . import bpftool as bt
from .btf import Enumerator
from .build import BuildResult, compile_bpf
from .checks import CheckReport, run_checks
from .elf import patch_struct_ops_field
from .loader import GUEST_STATE_SNIPPET, parse_exits, parse_state
from .prepare import Target, apply_to_elf, guest_target, plan_load
from .provenance import Provenance, provenance_of
from .setup import SetupInfo, ensure_setup
from .vm import MicroVM, VMResult

STAGES = ("compile", "static", "kernel_verifier", "dynamic")

#: Shell-loop iterations per CPU-bound smoke task (~1 s each under TCG).
SMOKE_SPIN = 1500
SMOKE_SPINNERS = 4
SMOKE_SLEEPERS = 2
#: Seconds the smoke workload may take before unfinished tasks count as starved.
SMOKE_DEADLINE_S = 40


class Verdict(BaseModel):
    """The result of one stage."""

    stage: str
    ok: bool
    reason: str = ""
    details: list[str] = Field(default_factory=list)   # essential log lines / findings
    duration_s: float = 0.0
    skipped: bool = False

    def __str__(self) -> str:
        mark = "SKIP" if self.skipped else ("PASS" if self.ok else "FAIL")
        s = f"[{mark}] {self.stage:<16} {self.duration_s:6.2f}s  {self.reason}"
        return s + "".join(f"\n        {d}" for d in self.details)


class VerifyResult(BaseModel):
    """All stage verdicts; ``ok`` only when every stage passed."""

    source: Path
    ok: bool
    stages: list[Verdict] = Field(default_factory=list)
    ops_name: str = ""
    object_path: Path | None = None
    total_s: float = 0.0
    facts: dict[str, Any] = Field(default_factory=dict)  # kfuncs used, tunables, counters, events …

    @property
    def failed_stage(self) -> str | None:
        return next((v.stage for v in self.stages if not v.ok and not v.skipped), None)

    @property
    def reason(self) -> str:
        v = next((v for v in self.stages if not v.ok and not v.skipped), None)
        return v.reason if v else ""

    def verdict(self, stage: str) -> Verdict | None:
        return next((v for v in self.stages if v.stage == stage), None)

    def report(self) -> str:
        head = f"{self.source.name}: {'VERIFIED' if self.ok else 'REJECTED at ' + str(self.failed_stage)}"
        return head + "\n" + "\n".join(str(v) for v in self.stages) + f"\ntotal {self.total_s:.1f}s"


# ---------------------------------------------------------------------- host stages


def _stage_compile(source: Path, setup: SetupInfo, include_dirs: Sequence[Path | str]) -> tuple[Verdict, BuildResult]:
    b = compile_bpf(source, setup=setup, include_dirs=include_dirs)
    if b.ok:
        warn = [str(d) for d in b.warnings[:5]]
        return Verdict(stage="compile", ok=True, reason=f"{len(b.warnings)} warning(s)" if warn else "",
                       details=warn, duration_s=b.duration_s), b
    first = b.errors[0].message if b.errors else ""
    reason = f"{len(b.errors)} compile error(s)" + (f": {first[:160]}" if first else "")
    return Verdict(stage="compile", ok=False, reason=reason, details=b.summary(8).splitlines(),
                   duration_s=b.duration_s), b


def _stage_static(source: Path, build: BuildResult, obj: bytes, setup: SetupInfo,
                  include_dirs: Sequence[Path | str]) -> tuple[Verdict, CheckReport, Provenance]:
    """The static policy, with the rule set the program's provenance selects (``provenance.py``)."""
    t0 = time.monotonic()
    prov = provenance_of(build, setup)
    rep = run_checks(source.read_text(errors="replace"), obj, setup, [source.parent, *include_dirs], prov)
    dt = round(time.monotonic() - t0, 3)
    errs = [str(f) for f in rep.errors]
    allowed = [str(f) for f in rep.findings if f.severity == "allowed"]
    warns = [str(f) for f in rep.findings if f.severity == "warning"]
    if rep.ok:
        reason = ", ".join(x for x in (f"{len(warns)} warning(s)" if warns else "",
                                       f"upstream program ({prov.label()}): {len(allowed)} finding(s) allowed"
                                       if allowed else "") if x)
        return Verdict(stage="static", ok=True, reason=reason, details=(allowed[:3] + warns)[:5],
                       duration_s=dt), rep, prov
    return Verdict(stage="static", ok=False, reason=rep.errors[0].message, details=errs[:8] + warns[:3],
                   duration_s=dt), rep, prov


# ---------------------------------------------------------------------- guest script


def guest_script(n: int, spin: int = SMOKE_SPIN, deadline_s: int = SMOKE_DEADLINE_S) -> str:
    """One boot, ``n`` schedulers at ``/aios/obj/sched{i}.bpf.o``: load, smoke, unload each.

    Every step reports through blobs/results tagged with the index, so a
    crash midway still leaves the earlier verdicts intact.
    """
    ticks = deadline_s * 5
    return f"""
st() {{ {GUEST_STATE_SNIPPET} > /tmp/.st 2>&1; aios_emit "$1" /tmp/.st; }}
i=0
while [ $i -lt {n} ]; do
  OBJ=/aios/obj/sched$i.bpf.o; LINK=/sys/fs/bpf/aios_$i
  dmesg -c > /dev/null 2>&1
  aios_result "{{\\"kind\\":\\"begin\\",\\"i\\":$i}}"
  st "state_before_$i"
  mkdir -p $LINK
  bpftool struct_ops register $OBJ $LINK > /tmp/reg.txt 2>&1; rc=$?
  aios_emit "register_$i" /tmp/reg.txt
  aios_result "{{\\"kind\\":\\"register\\",\\"i\\":$i,\\"rc\\":$rc}}"
  if [ $rc -ne 0 ]; then
    dmesg > /tmp/dm.txt; aios_emit "dmesg_$i" /tmp/dm.txt; rm -rf $LINK; i=$((i+1)); continue
  fi
  sleep 0.3
  st "state_loaded_$i"
  rm -f /tmp/spin.* /tmp/sleep.* /tmp/hb.rc
  t0=$(cut -d' ' -f1 /proc/uptime)
  k=0; while [ $k -lt {SMOKE_SPINNERS} ]; do
    ( c=0; while [ $c -lt {spin} ]; do c=$((c+1)); done; echo $c > /tmp/spin.$k ) &
    k=$((k+1)); done
  k=0; while [ $k -lt {SMOKE_SLEEPERS} ]; do
    ( c=0; while [ $c -lt 10 ]; do sleep 0.05; c=$((c+1)); done; echo $c > /tmp/sleep.$k ) &
    k=$((k+1)); done
  expect=$(({SMOKE_SPINNERS}+{SMOKE_SLEEPERS}))
  if command -v hackbench > /dev/null; then
    ( hackbench -g 1 -f 2 -l 20 > /tmp/hb.txt 2>&1; echo $? > /tmp/hb.rc ) &
    expect=$((expect+1))
  fi
  n=0
  while [ $n -lt {ticks} ]; do
    got=$(ls /tmp/spin.* /tmp/sleep.* /tmp/hb.rc 2>/dev/null | wc -l)
    [ "$got" -ge "$expect" ] && break
    sleep 0.2; n=$((n+1))
  done
  t1=$(cut -d' ' -f1 /proc/uptime)
  spins=$(ls /tmp/spin.* 2>/dev/null | wc -l); sleeps=$(ls /tmp/sleep.* 2>/dev/null | wc -l)
  hb=$(cat /tmp/hb.rc 2>/dev/null || echo -1)
  aios_result "{{\\"kind\\":\\"smoke\\",\\"i\\":$i,\\"spinners\\":$spins,\\"sleepers\\":$sleeps,\\"hackbench_rc\\":$hb,\\"expected\\":$expect,\\"t0\\":$t0,\\"t1\\":$t1}}"
  st "state_after_$i"
  bpftool map show 2>/dev/null | awk -F: '/ name [^ ]*\\.(bss|data) /{{print $1}}' > /tmp/ids
  for id in $(cat /tmp/ids); do bpftool -j map dump id $id > /tmp/m.json 2>&1; aios_emit "map_${{i}}_$id" /tmp/m.json; done
  rm -f $LINK/*; rmdir $LINK 2>/dev/null
  n=0; while [ $n -lt 50 ]; do s=$(cat /sys/kernel/sched_ext/state); [ "$s" = disabled ] && break; sleep 0.1; n=$((n+1)); done
  st "state_unloaded_$i"
  dmesg > /tmp/dm.txt; aios_emit "dmesg_$i" /tmp/dm.txt
  aios_result "{{\\"kind\\":\\"end\\",\\"i\\":$i}}"
  wait
  i=$((i+1))
done
"""


def _kernel_verdict(i: int, res: VMResult, t_share: float) -> Verdict:
    reg = res.results_of("register")
    reg_i = next((r for r in reg if r.get("i") == i), None)
    text = res.blobs.get(f"register_{i}", "")
    if reg_i is None:
        why = res.describe_failure() or "the guest never reached this scheduler"
        return Verdict(stage="kernel_verifier", ok=False, reason=f"not loaded: {why}", duration_s=t_share)
    if reg_i.get("rc") == 0:
        r = bt.parse_register(text)
        return Verdict(stage="kernel_verifier", ok=True, reason=f"loaded ({', '.join(r.ops) or 'struct_ops'})",
                       duration_s=t_share)
    r = bt.parse_register(text)
    details = bt.essential_verifier_lines(r.verifier_log)
    exits = [e for e in parse_exits(res.blobs.get(f"dmesg_{i}", "")) if e.action == "disabled"]
    if r.verifier_log:
        prog = f" in program {r.failed_program}" if r.failed_program else ""
        last = next((ln for ln in reversed(details) if not ln.startswith(("processed", ";"))), "")
        reason = f"kernel verifier rejected the scheduler{prog}: {last}".rstrip(": ")
    elif exits:
        e = exits[-1]
        reason = f"scheduler failed to enable: {e.reason}"
        details = e.detail[:6]
    else:
        errs = [ln for ln in text.splitlines() if re.search(r"error|fail|invalid|denied", ln, re.I)]
        reason = "load failed: " + (errs[-1].strip() if errs else r.error or "bpftool exited non-zero")
        details = errs[-8:]
    return Verdict(stage="kernel_verifier", ok=False, reason=reason, details=details, duration_s=t_share)


def exit_record(counters: dict[str, Any], enums: dict[str, Enumerator] | None = None) -> dict[str, Any]:
    """The scheduler's exit record (``UEI_DEFINE``/``AIOS_UEI_DEFINE``) from its ``.data`` dump, if it exited.

    Upstream's ``struct user_exit_info`` and aios's ``struct aios_exit_info``
    both carry ``kind``, ``exit_code``, ``reason`` and ``msg``; ``kind`` is named
    from the target kernel's ``enum scx_exit_kind`` (``SCX_EXIT_ERROR_BPF`` …).
    Empty when no record is there or the scheduler has not exited (kind 0).
    """
    for value in counters.values():
        if not (isinstance(value, dict) and {"kind", "reason", "msg"} <= set(value)):
            continue
        try:
            kind = int(value["kind"])
        except (TypeError, ValueError):
            continue
        if kind == 0:
            return {}
        names = [n for n, e in (enums or {}).items() if e.enum == "scx_exit_kind" and e.value == kind]
        return {"kind": kind, "kind_name": names[0] if names else "", "exit_code": value.get("exit_code", 0),
                "reason": _c_string(value.get("reason")), "msg": _c_string(value.get("msg"))}
    return {}


def _c_string(v: Any) -> str:
    """bpftool prints a char array as a string, or as a list of byte values when it holds non-text."""
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        raw = bytes(int(x) & 0xFF if not isinstance(x, str) else int(x, 0) & 0xFF for x in v)
        return raw.split(b"\0", 1)[0].decode(errors="replace")
    return ""


def describe_exit_record(uei: dict[str, Any]) -> str:
    """One line: ``SCX_EXIT_ERROR_BPF (1025), code 0: scx_bpf_error (…): <msg>``."""
    kind = f"{uei.get('kind_name') or 'kind'} ({uei.get('kind')})"
    parts = [f"{kind}, code {uei.get('exit_code', 0)}"]
    if uei.get("reason"):
        parts.append(str(uei["reason"]))
    if uei.get("msg"):
        parts.append(str(uei["msg"]))
    return ": ".join(parts)


def _dynamic_verdict(i: int, res: VMResult, ops_name: str, t_share: float,
                     enums: dict[str, Enumerator] | None = None) -> tuple[Verdict, dict]:
    facts: dict[str, Any] = {}
    loaded = parse_state(res.blobs.get(f"state_loaded_{i}", ""))
    after = parse_state(res.blobs.get(f"state_after_{i}", ""))
    unloaded = parse_state(res.blobs.get(f"state_unloaded_{i}", ""))
    smoke = next((r for r in res.results_of("smoke") if r.get("i") == i), None)
    dmesg = res.blobs.get(f"dmesg_{i}", "")
    exits = parse_exits(dmesg)
    bad = [e for e in exits if e.action == "disabled" and e.kind != "unregistered"]
    facts["events"] = after.events or loaded.events
    facts["exits"] = [e.model_dump() for e in exits]
    counters: dict[str, Any] = {}
    for key, blob in res.blobs.items():
        if key.startswith(f"map_{i}_"):
            try:
                counters.update(bt.datasec_values(bt.parse_map_dump(blob)))
            except (ValueError, TypeError):
                pass
    facts["counters"] = counters
    if smoke:
        facts["smoke"] = smoke
    problems: list[str] = []
    details: list[str] = []
    uei = exit_record(counters, enums)
    if uei:
        facts["exit_record"] = uei
    if bad:
        e = bad[0]
        kind = "watchdog stall" if e.kind == "watchdog" else f"{e.kind} exit"
        record = f"; exit record: {describe_exit_record(uei)}" if uei else ""
        problems.append(f"ejected by the kernel ({kind}): {e.reason}{record}")
        details += e.detail[:6]
    elif uei:
        problems.append(f"the scheduler exited: {describe_exit_record(uei)}")
    if res.kernel_problem:
        problems.append(f"guest kernel problem: {res.kernel_problem}")
    if smoke is None:
        problems.append("smoke workload did not report: " + (res.describe_failure() or "guest stopped"))
    else:
        missing = int(smoke.get("expected", 0)) - int(smoke.get("spinners", 0)) - int(smoke.get("sleepers", 0)) - (
            1 if smoke.get("hackbench_rc", -1) != -1 else 0)
        if missing > 0:
            problems.append(f"{missing} smoke task(s) made no progress within {SMOKE_DEADLINE_S}s")
        elif smoke.get("hackbench_rc", 0) not in (0, -1):
            problems.append(f"hackbench failed (exit {smoke.get('hackbench_rc')})")
        try:
            facts["smoke_s"] = round(float(smoke["t1"]) - float(smoke["t0"]), 2)
        except (KeyError, ValueError, TypeError):
            pass
    if not bad:
        if loaded.state != "enabled":
            problems.append(f"state after load was {loaded.state or 'unknown'!r}, not 'enabled'")
        elif after.state != "enabled":
            problems.append(f"state after the workload was {after.state or 'unknown'!r}, not 'enabled'")
        if ops_name and loaded.ops and loaded.ops != ops_name:
            problems.append(f"root/ops reads {loaded.ops!r}, expected {ops_name!r}")
    if unloaded.state and unloaded.state != "disabled":
        problems.append(f"did not unload cleanly (state {unloaded.state!r})")
    elif not unloaded.state and smoke is not None:
        problems.append("unload not observed")
    if problems:
        return Verdict(stage="dynamic", ok=False, reason=problems[0], details=problems[1:] + details,
                       duration_s=t_share), facts
    dur = facts.get("smoke_s")
    return Verdict(stage="dynamic", ok=True,
                   reason=f"stayed enabled through the smoke workload{f' ({dur}s)' if dur else ''}; unloaded cleanly",
                   duration_s=t_share), facts


# ---------------------------------------------------------------------- public


def verify(source: Path | str, *, setup: SetupInfo | None = None, vm: MicroVM | None = None,
           watchdog_ms: int = 5000, stop_after: str | None = None, include_dirs: Sequence[Path | str] = (),
           overrides: dict[str, int] | None = None) -> VerifyResult:
    """Run all stages on one source file (stops at the first failing stage)."""
    return verify_many([source], setup=setup, vm=vm, watchdog_ms=watchdog_ms, stop_after=stop_after,
                       include_dirs=include_dirs, overrides=overrides)[0]


def verify_many(sources: Sequence[Path | str], *, setup: SetupInfo | None = None, vm: MicroVM | None = None,
                watchdog_ms: int = 5000, stop_after: str | None = None, vm_timeout_s: float | None = None,
                include_dirs: Sequence[Path | str] = (), overrides: dict[str, int] | None = None,
                boots: int = 1) -> list[VerifyResult]:
    """Verify several schedulers; those that reach stage 3 share one micro-VM boot.

    If that boot dies midway (a scheduler wedged the guest), the schedulers it
    did not get to are retried in a boot of their own, so one bad candidate
    cannot hide the verdicts of the others.

    Before the guest stages, each object gets what its loader would set
    (``prepare.plan_load``: SCX enums from the guest kernel's BTF, tunables
    from the VM's CPU count, ``RESIZE_ARRAY`` sizes); ``object_path`` then holds
    those initialized bytes, the ones loaded here and by ``measure``.  What
    cannot be inferred fails the static stage with a one-line reason
    (``overrides``, i.e. ``--set NAME=VALUE``, supplies it).

    The host stages of the sources run on every host CPU at once (clang is a
    subprocess).  ``boots`` > 1 splits the guest stages over that many
    concurrent boots, in order (the first schedulers in the first boot): each
    TCG guest runs on one host thread, so on an otherwise idle multi-core host
    the batch takes about 1/``boots`` of the time; each scheduler's verdict is
    the same, only its boot-mates change.
    """
    setup = setup or ensure_setup(progress=False)
    vm = vm or MicroVM(setup)
    target = guest_target(setup, vm.cpus)
    t_all = time.monotonic()
    paths = [Path(src).resolve() for src in sources]
    workers = max(1, min(len(paths), os.cpu_count() or 1))

    def host(source: Path) -> tuple[VerifyResult, bytes | None]:
        return _host_stages(source, setup, target, watchdog_ms, stop_after, include_dirs, overrides)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = list(pool.map(host, paths))
    results = [vr for vr, _obj in done]
    pending = [(vr, obj) for vr, obj in done if obj is not None]
    if pending:
        n = max(1, min(boots, len(pending)))
        size = -(-len(pending) // n)
        chunks = [pending[i:i + size] for i in range(0, len(pending), size)]
        if len(chunks) == 1:
            _run_guest(pending, vm, vm_timeout_s, retry=True, enums=target.enums)
        else:
            _ = vm.accel  # decided once, before the boots start
            with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
                for f in [pool.submit(_run_guest, c, vm, vm_timeout_s, True, target.enums) for c in chunks]:
                    f.result()
    for vr in results:
        ran_ok = all(v.ok for v in vr.stages if not v.skipped)
        vr.ok = ran_ok and (stop_after is not None or not any(v.skipped for v in vr.stages))
    if len(results) == 1:
        results[0].total_s = round(time.monotonic() - t_all, 2)
    return results


def _host_stages(source: Path, setup: SetupInfo, target: Target, watchdog_ms: int, stop_after: str | None,
                 include_dirs: Sequence[Path | str], overrides: dict[str, int] | None
                 ) -> tuple[VerifyResult, bytes | None]:
    """Compile and static stages of one source; the object for the guest stages, or None when it stops here."""
    t0 = time.monotonic()
    vr = VerifyResult(source=source, ok=False)
    v, b = _stage_compile(source, setup, include_dirs)
    vr.stages.append(v)
    if not v.ok:
        _skip_rest(vr, "compile")
        vr.total_s = round(time.monotonic() - t0, 2)
        return vr, None
    vr.object_path = b.object_path
    obj = b.object_path.read_bytes()
    v, rep, prov = _stage_static(source, b, obj, setup, include_dirs)
    vr.facts["provenance"] = prov.model_dump()
    if v.ok:
        v, obj = _initialize(source, obj, target, overrides, v, vr)
        b.object_path.write_bytes(obj)
    vr.facts["object_sha256"] = hashlib.sha256(obj).hexdigest()  # host mode loads only these bytes
    vr.stages.append(v)
    vr.ops_name = next(iter(rep.ops_names.values()), "")
    vr.facts.update(kfuncs_used=rep.kfuncs_used, tunables=rep.tunables)
    vr.total_s = round(time.monotonic() - t0, 2)
    if not v.ok or stop_after in ("compile", "static"):
        _skip_rest(vr, "static", "" if not v.ok else "not run (--stop-after)")
        return vr, None
    try:
        obj = patch_struct_ops_field(obj, "timeout_ms", watchdog_ms, setup)
    except (KeyError, ValueError, RuntimeError) as e:
        vr.stages.append(Verdict(stage="kernel_verifier", ok=False, reason=f"cannot prepare object: {e}"))
        _skip_rest(vr, "kernel_verifier")
        return vr, None
    return vr, obj


def _initialize(source: Path, obj: bytes, target: Target, overrides: dict[str, int] | None, v: Verdict,
                vr: VerifyResult) -> tuple[Verdict, bytes]:
    """Apply the loader's pre-load initialization; a problem turns the static verdict into a failure."""
    plan = plan_load(source, obj, target, overrides)
    vr.facts["load_plan"] = plan.facts()
    if plan.problems:
        return v.model_copy(update={"ok": False, "reason": plan.problems[0],
                                    "details": plan.problems[1:] + v.details}), obj
    if plan.values or plan.resizes:
        obj = apply_to_elf(obj, plan)
        note = f"initialized {len(plan.values)} read-only global(s) for {plan.target}"
        if plan.resizes:
            note += f", resized {', '.join(plan.resizes)}"
        v = v.model_copy(update={"details": [*v.details, note]})
    return v, obj


def _skip_rest(vr: VerifyResult, after: str, reason: str = "") -> None:
    for st in STAGES[STAGES.index(after) + 1:]:
        vr.stages.append(Verdict(stage=st, ok=False, skipped=True, reason=reason or f"not run ({after} did not pass)"))


def _run_guest(pending: list[tuple[VerifyResult, bytes]], vm: MicroVM, timeout_s: float | None, retry: bool,
               enums: dict[str, Enumerator] | None = None) -> None:
    n = len(pending)
    files = {f"/aios/obj/sched{i}.bpf.o": obj for i, (_vr, obj) in enumerate(pending)}
    timeout = timeout_s or (60 + n * (SMOKE_DEADLINE_S + 30))
    res = vm.run(guest_script(n), files=files, timeout_s=timeout)
    share = round(res.duration_s / n, 2)
    retry_list: list[tuple[VerifyResult, bytes]] = []
    ended = {r.get("i") for r in res.results_of("end")} | {
        r.get("i") for r in res.results_of("register") if r.get("rc") != 0}
    began = {r.get("i") for r in res.results_of("begin")}
    for i, (vr, obj) in enumerate(pending):
        if i not in ended and retry and n > 1 and (i not in began or i != max(began, default=-1)):
            retry_list.append((vr, obj))
            continue
        kv = _kernel_verdict(i, res, share)
        vr.stages.append(kv)
        if not kv.ok:
            _skip_rest(vr, "kernel_verifier")
        else:
            dv, facts = _dynamic_verdict(i, res, vr.ops_name, share, enums)
            vr.stages.append(dv)
            vr.facts.update(facts)
        vr.facts["vm"] = {"boot_s": res.duration_s, "accel": res.accel, "batch": n, "timed_out": res.timed_out}
        vr.total_s = round(vr.total_s + share, 2)
    for item in retry_list:
        _run_guest([item], vm, timeout_s, retry=False, enums=enums)


def verdicts_json(results: list[VerifyResult]) -> str:
    return json.dumps([json.loads(r.model_dump_json()) for r in results], indent=2)
