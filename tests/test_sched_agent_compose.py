"""Compose mode: the building-block schema, constrained choices, and the generator.

Every one of the 450 combinations must be a scheduler that compiles: the 90 structural ones
(ordering x dispatch x wake-up boost x idle selection) are compiled with clang on the host here,
and the slice only changes tunable initialisers and names (asserted textually), so the other 360
compile by construction.  A representative sample goes through the full VM verifier in
``test_sched_agent_vm.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import ValidationError

from aios.sched_ext.compose import (
    BLOCK_DOCS,
    SLICE_CHOICES_US,
    Composition,
    Dispatch,
    IdleSelection,
    Ordering,
    WakeupBoost,
    all_compositions,
    block_catalogue,
    composition_from_choices,
    field_choices,
    generate,
    structural_compositions,
)

INCLUDE = Path(__file__).resolve().parents[1] / "aios" / "sched_ext" / "include"
FLAGS = ["-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", "-fms-extensions", "-Wno-microsoft-anon-tag"]


def _include_dirs() -> list[Path] | None:
    from aios.sched_ext.setup import load_setup

    info = load_setup()
    if info is None or not (INCLUDE / "aios_scx.h").is_file() or not shutil.which("clang"):
        return None
    return [*info.include_dirs, INCLUDE]


def test_schema_counts_and_names_unique():
    combos = all_compositions()
    assert len(combos) == 5 * 2 * 5 * 3 * 3 == 450
    assert len({c.name for c in combos}) == 450
    assert all(re.fullmatch(r"[a-z0-9_]+", c.name) and len(c.name) < 64 for c in combos)
    assert len(structural_compositions()) == 90


def test_schema_rejects_invalid_choices():
    with pytest.raises(ValidationError):
        Composition(ordering="random")
    with pytest.raises(ValidationError):
        Composition(ordering="vtime", slice_us=7000)
    with pytest.raises(ValidationError):
        Composition(ordering="vtime", bogus=1)
    c = composition_from_choices(
        {
            "ordering": "shortest_runtime",
            "dispatch": "per_cpu",
            "slice_us": "2000",
            "wakeup_boost": "preempt",
            "idle": "any_idle",
        }
    )
    assert c.ordering is Ordering.SHORTEST_RUNTIME and c.slice_us == 2000


def test_field_choices_cover_the_schema_exactly():
    """The strings handed to constrained decoding are exactly the schema's values."""
    ch = field_choices()
    assert ch["ordering"] == [o.value for o in Ordering]
    assert ch["dispatch"] == [d.value for d in Dispatch]
    assert ch["wakeup_boost"] == [w.value for w in WakeupBoost]
    assert ch["idle"] == [i.value for i in IdleSelection]
    assert ch["slice_us"] == [str(s) for s in SLICE_CHOICES_US]
    # every choice string validates
    for field_name, values in ch.items():
        for v in values:
            composition_from_choices({"ordering": "vtime", field_name: v})
    cat = block_catalogue()
    assert all(k in cat for k in BLOCK_DOCS)


def test_generated_source_is_readable_and_general():
    g = generate(
        Composition(ordering="longest_runtime", dispatch="per_cpu", wakeup_boost="preempt", idle="prev_cpu")
    )
    src = g.source
    assert '#include "aios_scx.h"' in src and 'SEC(".struct_ops.link")' in src
    assert f'.name = "{g.name}"' in src
    assert "Policy:" in src and "longest observed runtime first" in src
    assert "starve_ns" in src  # bounded keys: no stalls
    # decisions from kernel observations only: no comm / pid / name matching
    for banned in ("comm", "bpf_get_current_comm", "->pid", "strncmp"):
        assert banned not in src
    assert g.tunables["slice_ns"] == 5_000_000
    assert "slice_ns" in src and "runtime_cap_ns" in src


def test_slice_only_changes_tunables_and_names():
    """So the 90 structural compiles below cover all 450 combinations."""
    for base in structural_compositions():
        ref = generate(base).source.replace(base.name, "NAME")
        ref = re.sub(r"\d+ULL", "N", re.sub(r"default \d+", "default N", ref))
        ref = re.sub(r"time slice of \d+ ms", "time slice of N ms", ref)
        ref = re.sub(r"slice_us +\d+", "slice_us N", ref)
        for s in SLICE_CHOICES_US:
            c = base.model_copy(update={"slice_us": s})
            src = generate(c).source.replace(c.name, "NAME")
            src = re.sub(r"\d+ULL", "N", re.sub(r"default \d+", "default N", src))
            src = re.sub(r"time slice of \d+ ms", "time slice of N ms", src)
            src = re.sub(r"slice_us +\d+", "slice_us N", src)
            assert src == ref, c.name


def _compile_all(sources: dict[str, str], tmp_path: Path, incs: list[Path]) -> dict[str, str]:
    inc_flags = [f"-I{p}" for p in incs]
    pch = tmp_path / "aios_scx.h.pch"
    subprocess.run(
        ["clang", *FLAGS, *inc_flags, "-x", "c-header", str(INCLUDE / "aios_scx.h"), "-o", str(pch)],
        check=True,
        capture_output=True,
    )

    def one(item: tuple[str, str]) -> tuple[str, str]:
        name, src = item
        path = tmp_path / f"{name}.bpf.c"
        path.write_text(src)
        proc = subprocess.run(
            [
                "clang",
                *FLAGS,
                "-Wall",
                "-Werror",
                *inc_flags,
                "-include-pch",
                str(pch),
                "-c",
                str(path),
                "-o",
                str(path.with_suffix(".o")),
            ],
            capture_output=True,
            text=True,
        )
        return name, "" if proc.returncode == 0 else proc.stderr[-2000:]

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        return dict(pool.map(one, sources.items()))


def test_all_structural_combinations_compile(tmp_path):
    incs = _include_dirs()
    if incs is None:
        pytest.skip("needs `aios sched setup` (vmlinux.h, libbpf headers), aios_scx.h and clang")
    sources = {c.name: generate(c).source for c in structural_compositions()}
    errors = {k: v for k, v in _compile_all(sources, tmp_path, incs).items() if v}
    assert not errors, "\n\n".join(f"{k}:\n{v}" for k, v in list(errors.items())[:3])
    # each object declares exactly one sched_ext_ops struct_ops map
    obj = tmp_path / f"{structural_compositions()[0].name}.bpf.o"
    assert obj.stat().st_size > 0
