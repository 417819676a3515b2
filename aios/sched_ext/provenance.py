"""Where a scheduler program comes from: the kernel's own source package, or anyone else.

Why the static policy needs to know: its rules are written for code a model or a user writes
(``checks.py``), and a few of them are about intent and hygiene, not safety — no inline assembly
(it hides what the program does from a reader and from the source checks), no ``bpf_printk`` (a
model's print on every enqueue floods the trace pipe). The kernel's own example schedulers break
exactly those: 7.2's scx_qmap touches its BPF arena with an empty ``asm volatile`` (so the kernel
verifier ties the arena to programs that only reach it through pointers) and prints on cgroup events
and dumps. They were written and reviewed in the kernel tree, and Debian ships them in a signed
package; refusing them would say nothing about their safety, which the kernel verifier still checks
instruction by instruction whoever wrote the C.

So a program is ``upstream`` only when the build that produced the object read nothing but the
kernel's bytes and the toolchain's own headers:

* the source is byte-for-byte a ``*.bpf.c`` of the ``tools/sched_ext`` tree that set-up extracted
  from ``linux-source-X.Y`` (its sha256 is in the tree's manifest, written at extraction), and the
  tree's copy still has those bytes;
* every header clang read (``BuildResult.dependencies``, from ``-MD``) is either the toolchain's
  (the kernel's generated ``vmlinux.h``/kfunc prototypes, libbpf's headers, ``aios_scx.h``, the
  compiler's own system directories, which every program can reach anyway) or
  byte-for-byte a file of that manifest — so a copy of scx_qmap.bpf.c next to a doctored
  ``scx_qmap.h``, or an ``-I`` directory that shadows ``scx/common.bpf.h``, is not upstream.

Everything else (model-written, user-written, or an upstream file with one byte changed) is
``submitted`` and keeps the strict policy. The trust root is the set-up cache, as it already is for
``vmlinux.h``, clang and bpftool: whoever can write there can change what any program compiles to.

Public API::

    provenance_of(build, setup) -> Provenance     # origin "upstream" | "submitted", with the reason
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from .build import INCLUDE_DIR, BuildResult, system_include_dirs
from .setup import SetupInfo
from .setup.kernel_source import file_sha256, read_manifest


class Provenance(BaseModel):
    """Who wrote a program, as far as the bytes can show it."""

    origin: Literal["upstream", "submitted"]
    sha256: str
    #: for upstream: the package and the program's path in its tools/sched_ext ("scx_qmap.bpf.c")
    package: str = ""
    program: str = ""
    #: one line: why it is (or is not) upstream
    reason: str = ""

    def label(self) -> str:
        return f"{self.package}: tools/sched_ext/{self.program}" if self.origin == "upstream" else "submitted"


def _toolchain_header(path: Path, setup: SetupInfo) -> bool:
    """A header the toolchain itself provides for every program (never the user's, never the tree's)."""
    kernel_dir = Path(setup.include_dirs[0]).resolve()
    if path.parent == kernel_dir:       # vmlinux.h and the kfunc prototypes generated from the kernel's BTF
        return True
    roots = [INCLUDE_DIR.resolve(), *(Path(d).resolve() for d in setup.include_dirs[1:]),   # aios_scx.h, libbpf
             *system_include_dirs(setup.clang)]                                           # e.g. asm-generic/errno.h
    return any(path.is_relative_to(r) for r in roots)


def provenance_of(build: BuildResult, setup: SetupInfo) -> Provenance:
    """Is the program ``build`` compiled byte-for-byte the kernel's own (see the module docstring)?"""
    source = build.source
    sha = file_sha256(source)

    def submitted(why: str) -> Provenance:
        return Provenance(origin="submitted", sha256=sha, reason=why)

    tree = setup.scx_dir
    manifest = read_manifest(tree) if tree is not None else {}
    if not manifest:
        return submitted("no kernel sched_ext tree in the set-up cache to compare with")
    programs = {h: rel for rel, h in manifest.items() if rel.endswith(".bpf.c")}
    rel = programs.get(sha)
    if rel is None:
        return submitted(f"not byte-for-byte a program of {setup.scx_source}")
    assert tree is not None
    if file_sha256(tree / rel) != sha:
        return submitted(f"the cache's {rel} no longer matches what was extracted from {setup.scx_source}")
    if not build.dependencies:
        return submitted("the compiler did not report the files it read")
    known = {(Path(r).name, h) for r, h in manifest.items()}   # same name and same bytes as a file of the tree
    for dep in build.dependencies:
        if dep == source.resolve() or _toolchain_header(dep, setup):
            continue
        if not dep.is_file() or (dep.name, file_sha256(dep)) not in known:
            return submitted(f"{rel} matches {setup.scx_source}, but the header {dep} it was built with does not")
    return Provenance(origin="upstream", sha256=sha, package=setup.scx_source, program=rel,
                      reason=f"byte-for-byte tools/sched_ext/{rel} of {setup.scx_source}, built with its own headers")
