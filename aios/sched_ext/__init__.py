"""sched_ext toolchain: micro-VM sandbox, BPF build, staged verifier and loaders.

Nothing here loads an unverified scheduler on the host: verification and
measurement run inside a qemu micro-VM (see ``vm.py``).  Submodules import
lazily through this namespace so ``import aios.sched_ext`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ensure_setup": "setup", "load_setup": "setup", "SetupInfo": "setup", "SetupError": "setup",
    "MicroVM": "vm", "VMResult": "vm",
    "compile_bpf": "build", "BuildResult": "build", "Diagnostic": "build",
    "run_checks": "checks", "CheckReport": "checks",
    "verify": "verifier", "verify_many": "verifier", "Verdict": "verifier", "VerifyResult": "verifier",
    "read_host_state": "loader", "parse_exits": "loader",
    "HostScheduler": "libbpf", "HostModeRefused": "libbpf",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(name)
