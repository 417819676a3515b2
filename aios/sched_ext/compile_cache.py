"""A content-addressed memo of successful clang compiles (ccache's preprocessor mode, in process).

Why: a BPF compile costs ~1.3 s here, nearly all of it parsing the guest kernel's 2.8 MB
``vmlinux.h``; the same program is compiled again and again (the static checks and then the full
verifier, the screen and then the measurement, every test of a seed), while preprocessing alone
costs ~0.2 s. So the key is everything that decides the object: clang's identity, the working
directory (it lands in the debug info), the command line without its output paths, and the
*preprocessed* translation unit (every header clang would read, exactly as it would read it, with
its path in the line markers). A header that changes, appears earlier on the include path or
disappears changes that text; nothing short of the same input ever returns a stored object.

Only successful compiles are kept (a failure costs its own diagnostics and is cheap to redo). An
entry stores what clang produced: the object bytes, its stderr (warnings) and its ``-MD`` dependency
text, so ``compile_bpf`` finishes a hit through exactly the code path of a real compile.

Why a module-level memo despite the no-global-state rule: it is a pure function's cache (same
input, same bytes), bounded, and locked; kernels sharing it cannot observe each other through it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

#: Entries kept (an object with BTF and debug info is ~50-150 KB).
MAX_ENTRIES = 256


@dataclass(frozen=True)
class Compiled:
    """What one successful clang run produced."""

    obj: bytes
    stderr: str
    depfile: str


class CompileMemo:
    """A bounded LRU of ``Compiled`` by key; safe to use from several threads."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Compiled] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Compiled | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return hit

    def put(self, key: str, value: Compiled) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


MEMO = CompileMemo()

#: Flags that name outputs (dropped from the key and from the preprocessing command) and how many
#: arguments each takes.
_OUTPUT_FLAGS = {"-o": 1, "-MF": 1, "-MD": 0, "-c": 0}


def _clang_identity(clang: str) -> str:
    """The binary's resolved path, size and mtime: a reinstalled clang is another compiler."""
    try:
        path = os.path.realpath(clang if os.sep in clang else _which(clang))
        st = os.stat(path)
        return f"{path}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        return clang


def _which(name: str) -> str:
    for d in os.environ.get("PATH", "").split(os.pathsep):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return name


def without_outputs(cmd: Sequence[str]) -> list[str]:
    """``cmd`` without ``-c``, ``-o OUT``, ``-MD`` and ``-MF FILE`` (the parts that name outputs)."""
    out: list[str] = []
    skip = 0
    for arg in cmd:
        if skip:
            skip -= 1
            continue
        if arg in _OUTPUT_FLAGS:
            skip = _OUTPUT_FLAGS[arg]
            continue
        out.append(arg)
    return out


def key_for(cmd: Sequence[str], timeout_s: float) -> str | None:
    """The memo key of a compile command (None when preprocessing fails: compile it for real)."""
    base = without_outputs(cmd)
    try:
        proc = subprocess.run([*base, "-E", "-o", "-"], capture_output=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    h = hashlib.sha256()
    for part in (_clang_identity(cmd[0]), os.getcwd(), "\0".join(base[1:])):
        h.update(part.encode(errors="surrogateescape") + b"\0")
    h.update(proc.stdout)
    return h.hexdigest()
