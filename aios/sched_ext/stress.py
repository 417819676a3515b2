"""Validation under load: a verified scheduler stays loaded through a stress mix in the micro-VM.

Why: mature schedulers have stalled only under heavy mixed load, so the sched-agent accepts a
winner only after it stayed enabled through one. The same guest job with no stressors is a plain
load trial (load, watch ``/sys/kernel/sched_ext/state`` every second, unload), which is what
loading "in the micro-VM" means when every boot starts fresh.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field


class StressResult(BaseModel):
    """The final candidate's stress validation: did it stay enabled under a heavy mix for the whole run?"""

    ok: bool
    reason: str = ""
    seconds: float = 0.0
    enabled_samples: int = 0
    total_samples: int = 0
    stressors: str = ""
    exits: list[str] = Field(default_factory=list)


#: The stress mix: CPU hogs, context-switch storms, fork/exit churn, pipes and yields at once, so
#: every scheduler callback runs constantly (mature schedulers have stalled only under such load).
STRESS_MIX = "--cpu 2 --switch 1 --fork 1 --pipe 1 --yield 1"


def stress_script(seconds: int, stressors: str = STRESS_MIX) -> str:
    """Guest job: register the scheduler, run ``stressors`` (none: an idle hold), sample ``state``
    every second, unload."""
    load = (
        f"stress-ng {stressors} --timeout {seconds}s > /tmp/sng.txt 2>&1 &\nSNG=$!"
        if stressors
        else "SNG=; : > /tmp/sng.txt"
    )
    return f"""
state() {{ cat /sys/kernel/sched_ext/state 2>/dev/null; }}
LINK=/sys/fs/bpf/aios_stress; mkdir -p $LINK
dmesg -c > /dev/null 2>&1
if ! bpftool struct_ops register /aios/stress.bpf.o $LINK > /tmp/reg.txt 2>&1 || [ "$(state)" != enabled ]; then
  aios_emit register /tmp/reg.txt
  aios_result "{{\\"kind\\":\\"stress\\",\\"loaded\\":false,\\"state\\":\\"$(state)\\"}}"
  dmesg > /tmp/dm.txt; aios_emit dmesg /tmp/dm.txt; exit 0
fi
{load}
t=0; on=0; n=0
while [ $t -lt {seconds} ]; do
  sleep 1; t=$((t+1)); n=$((n+1))
  [ "$(state)" = enabled ] && on=$((on+1))
done
rc=0; [ -n "$SNG" ] && {{ wait $SNG; rc=$?; }}
after=$(state)
rm -rf $LINK
k=0; while [ "$(state)" != disabled ] && [ $k -lt 50 ]; do sleep 0.1; k=$((k+1)); done
aios_result "{{\\"kind\\":\\"stress\\",\\"loaded\\":true,\\"samples\\":$n,\\"enabled\\":$on,\\"rc\\":$rc,\\"after\\":\\"$after\\",\\"unloaded\\":\\"$(state)\\"}}"
aios_emit stressng /tmp/sng.txt
dmesg > /tmp/dm.txt; aios_emit dmesg /tmp/dm.txt
exit 0
"""


def stress_in_vm(obj: Path, seconds: float, vm: Any, stressors: str = STRESS_MIX) -> StressResult:
    """Run ``stressors`` for ``seconds`` under a verified scheduler object in the micro-VM.

    With no stressors it is a plain load trial: the scheduler is loaded, watched for ``seconds``
    and unloaded, all in one boot (the micro-VM keeps nothing between boots). The object's
    watchdog (``timeout_ms``) is set to 5 s first, as in the verifier's dynamic stage, so a stall
    shows up as an ejection within the run instead of after 30 s.
    """
    from aios.sched_ext.elf import patch_struct_ops_field
    from aios.sched_ext.loader import parse_exits

    secs = max(1, int(round(seconds)))
    data = patch_struct_ops_field(Path(obj).read_bytes(), "timeout_ms", 5000)
    t0 = time.time()
    res = vm.run(
        stress_script(secs, stressors),
        files={"/aios/stress.bpf.o": data},
        timeout_s=secs * 3 + 120,
        tools=bool(stressors),
    )
    took = time.time() - t0
    rows = res.results_of("stress")
    exits = [e for e in parse_exits(res.blobs.get("dmesg", "")) if e.action == "disabled"]
    bad = [e for e in exits if e.kind != "unregistered"]
    exit_lines = [f"{e.name}: {e.reason}" for e in exits]
    if not rows:
        return StressResult(
            ok=False, reason=f"stress run did not report: {res.describe_failure()}", seconds=took
        )
    r = rows[-1]
    if not r.get("loaded"):
        return StressResult(
            ok=False, reason=f"did not load: {res.blobs.get('register', '')[-300:]}", seconds=took
        )
    n, on = int(r.get("samples", 0)), int(r.get("enabled", 0))
    problems = []
    if bad:
        problems.append(f"ejected by the kernel: {bad[0].reason}")
    if on < n or r.get("after") != "enabled":
        problems.append(f"enabled in {on}/{n} one-second samples (state after: {r.get('after')})")
    if r.get("unloaded") != "disabled":
        problems.append(f"did not unload cleanly (state {r.get('unloaded')})")
    if res.kernel_problem:
        problems.append(f"guest kernel problem: {res.kernel_problem}")
    return StressResult(
        ok=not problems,
        reason="; ".join(problems)
        or (f"stayed enabled for {n} s of stress-ng {stressors}" if stressors else f"stayed enabled for {n} s"),
        seconds=took,
        enabled_samples=on,
        total_samples=n,
        stressors=stressors,
        exits=exit_lines,
    )
