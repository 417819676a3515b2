"""Read what the kernel reports about sched_ext, in the guest (via script output) and on the host.

Why: "did the scheduler work" is answered by the kernel, not by the loader's
exit status — ``/sys/kernel/sched_ext/state``, ``root/ops``, ``enable_seq``,
``root/events`` and, when a scheduler is ejected, the dmesg line
``sched_ext: BPF scheduler "X" disabled (reason)``.  The same parser serves
both sides: the guest snippet prints ``key=value`` lines that come back as a
blob, the host reads sysfs directly.

Public API::

    GUEST_STATE_SNIPPET            # sh: prints key=value lines of the sched_ext sysfs
    guest_state_cmd(blob_name) -> str
    parse_state(text) -> SchedExtState
    read_host_state(root=Path("/sys/kernel/sched_ext")) -> SchedExtState
    parse_exits(dmesg_text) -> list[ExitEvent]
    classify_exit(reason) -> str   # "unregistered" | "watchdog" | "error" | "sysrq" | ...
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, Field

SCX_SYSFS = "/sys/kernel/sched_ext"

GUEST_STATE_SNIPPET = r"""{
  if [ -d /sys/kernel/sched_ext ]; then
    echo "available=1"
    for f in state enable_seq switch_all nr_rejected hotplug_seq; do
      [ -f /sys/kernel/sched_ext/$f ] && echo "$f=$(cat /sys/kernel/sched_ext/$f)"
    done
    [ -f /sys/kernel/sched_ext/root/ops ] && echo "ops=$(cat /sys/kernel/sched_ext/root/ops)"
    [ -f /sys/kernel/sched_ext/root/events ] && sed 's/^\(SCX_EV_[A-Z_]*\) *\(.*\)$/event.\1=\2/' /sys/kernel/sched_ext/root/events
  else
    echo "available=0"
  fi
}"""


def guest_state_cmd(blob_name: str) -> str:
    """Shell line that sends the current sched_ext state back as blob ``blob_name``."""
    return f"{GUEST_STATE_SNIPPET} > /tmp/.aios_state 2>&1; aios_emit {blob_name} /tmp/.aios_state"


class SchedExtState(BaseModel):
    """A snapshot of ``/sys/kernel/sched_ext``."""

    available: bool = False
    state: str = ""            # enabled | disabled | enabling | disabling
    ops: str = ""              # name of the loaded scheduler (root/ops)
    enable_seq: int = 0
    switch_all: int = 0
    nr_rejected: int = 0
    hotplug_seq: int = 0
    events: dict[str, int] = Field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.state == "enabled"


def parse_state(text: str) -> SchedExtState:
    st = SchedExtState()
    for line in text.splitlines():
        if "=" not in line:
            continue
        k, v = line.split("=", 1)
        k, v = k.strip(), v.strip()
        if k == "available":
            st.available = v == "1"
        elif k in ("state", "ops"):
            setattr(st, k, v)
        elif k in ("enable_seq", "switch_all", "nr_rejected", "hotplug_seq"):
            try:
                setattr(st, k, int(v))
            except ValueError:
                pass
        elif k.startswith("event."):
            try:
                st.events[k.removeprefix("event.")] = int(v.split()[0])
            except (ValueError, IndexError):
                pass
    return st


def read_host_state(root: Path | str = SCX_SYSFS) -> SchedExtState:
    """Read the host's sched_ext sysfs; ``available`` False when the kernel lacks sched_ext."""
    root = Path(root)
    if not root.is_dir():
        return SchedExtState(available=False)
    lines = ["available=1"]
    for f in ("state", "enable_seq", "switch_all", "nr_rejected", "hotplug_seq"):
        p = root / f
        if p.is_file():
            lines.append(f"{f}={p.read_text().strip()}")
    if (root / "root" / "ops").is_file():
        lines.append(f"ops={(root / 'root' / 'ops').read_text().strip()}")
    if (root / "root" / "events").is_file():
        for ln in (root / "root" / "events").read_text().splitlines():
            parts = ln.split()
            if len(parts) >= 2:
                lines.append(f"event.{parts[0]}={parts[1]}")
    return parse_state("\n".join(lines))


class ExitEvent(BaseModel):
    """One ``sched_ext: BPF scheduler "X" enabled/disabled (reason)`` kernel line."""

    name: str
    action: str                 # "enabled" | "disabled"
    reason: str = ""
    kind: str = ""              # classify_exit(reason) for "disabled"
    timestamp: float | None = None
    detail: list[str] = Field(default_factory=list)  # following sched_ext lines (error message, stall info)


_LINE = re.compile(r"(?:\[\s*(\d+\.\d+)\]\s*)?sched_ext: BPF scheduler \"([^\"]*)\" (enabled|disabled)(?: \((.*)\))?")


def classify_exit(reason: str) -> str:
    """Map the kernel's exit reason text onto a short kind."""
    r = reason.lower()
    if "unregistered from user space" in r:
        return "unregistered"
    if "unregistered from the main kernel" in r or "unregistered from bpf" in r:
        return "unregistered_bpf"
    if "watchdog" in r or "stall" in r:
        return "watchdog"
    if "sysrq" in r:
        return "sysrq"
    if "runtime error" in r or "scx_bpf_error" in r:
        return "error_bpf"
    if "error" in r:
        return "error"
    if "hotplug" in r:
        return "hotplug"
    return "other"


def parse_exits(dmesg: str) -> list[ExitEvent]:
    """All enable/disable events in order, with the detail lines that follow a disable."""
    events: list[ExitEvent] = []
    lines = dmesg.splitlines()
    for i, line in enumerate(lines):
        m = _LINE.search(line)
        if not m:
            continue
        ev = ExitEvent(name=m.group(2), action=m.group(3), reason=(m.group(4) or "").strip(),
                       timestamp=float(m.group(1)) if m.group(1) else None)
        if ev.action == "disabled":
            ev.kind = classify_exit(ev.reason)
            for nxt in lines[i + 1:i + 12]:
                if _LINE.search(nxt):
                    break
                if "sched_ext" in nxt:
                    ev.detail.append(re.sub(r"^\[\s*\d+\.\d+\]\s*", "", nxt).strip())
        events.append(ev)
    return events


def unexpected_exits(dmesg: str) -> list[ExitEvent]:
    """Disable events that were not a clean unload from user space."""
    return [e for e in parse_exits(dmesg) if e.action == "disabled" and e.kind != "unregistered"]
