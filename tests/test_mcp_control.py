"""The MCP server's control plane with the toolchain double: the rules, judged from its state.

``FakeBackend`` (``test_sched_agent.py``) replaces only the micro-VM parts; the verified-only
bookkeeping is the real ``SchedToolbox``. Host mode is tested with a host double (``HostDouble``)
because this machine's kernel has no sched_ext: nothing can really load on it. The real client
over stdio and HTTP, and the real VM, are in ``test_mcp_server.py``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from test_sched_agent import SCHED_DIR, FakeBackend

import aios.sched_ext.control as control
import aios.sched_ext.tools as tools
from aios.sched_ext.control import ControlError, ControlPlane
from aios.sched_ext.tools import SchedToolbox, digest


class HostDouble(FakeBackend):
    """FakeBackend plus a host whose loads are handles that know whether they were closed."""

    def __init__(self, repo_dir: Path, **kw: Any):
        super().__init__(repo_dir, **kw)
        self.handles: list[dict[str, Any]] = []
        self.trials: list[tuple[Path, float, str | None]] = []
        self.include_dirs: list[tuple[str, ...]] = []

    def verify(self, path: Path, stages: str, include_dirs: tuple[str, ...] = ()) -> Any:
        self.include_dirs.append(include_dirs)
        return super().verify(path, stages)

    def stress(self, obj: Path, seconds: float, stressors: str | None = None) -> Any:
        self.trials.append((obj, seconds, stressors))
        return super().stress(obj, seconds, stressors)

    def deploy(self, obj: Path, verdict: Any) -> Any:
        assert verdict.ok  # the toolbox hands over the verifier's own verdict
        handle = {"obj": obj, "closed": False}
        self.handles.append(handle)
        return handle

    def undeploy(self, handle: Any) -> None:
        handle["closed"] = True


def _plane(
    tmp_path: Path, host_mode: bool = False, include_roots: tuple[Path, ...] = (), **kw: Any
) -> tuple[ControlPlane, HostDouble]:
    backend = HostDouble(tmp_path / "repo", **kw)
    box = SchedToolbox(backend=backend, workdir=tmp_path / "work")
    return ControlPlane(box=box, host_mode=host_mode, include_roots=include_roots), backend


def _safe(plane: ControlPlane) -> None:
    """Every load the server made is of a program that passed every stage in this run."""
    passed = {v.digest for v in plane.box.verify_runs if v.ok and v.scope == "all"}
    assert all(r.verified and r.digest in passed for r in plane.box.loads)
    assert {r["digest"] for r in plane.status()["loads"]} <= passed


def test_nothing_loads_before_every_stage_passed(tmp_path):
    plane, backend = _plane(tmp_path, gain=lambda src: 0.2 if "aios_fifo" in src else -0.1)
    fifo = (SCHED_DIR / "fifo.bpf.c").read_text()
    for attempt in (
        lambda: plane.load("fifo"),
        lambda: plane.measure(["fifo", "sjf"], "batch", 2),
    ):
        with pytest.raises(ControlError, match="not passed every verifier stage"):
            attempt()
    quick = plane.submit(fifo, quick=True)  # host-side stages only: not loadable
    assert quick["ok"] and not quick["loadable"]
    with pytest.raises(ControlError, match="not passed every verifier stage"):
        plane.load(quick["digest"])
    assert plane.box.loads == [] and backend.trials == [] and backend.measured == []

    full = plane.submit(fifo)
    assert full["loadable"] and full["digest"] == digest(fifo)
    trial = plane.load(full["digest"], seconds=3)
    assert trial["ok"] and not trial["still_loaded"] and backend.trials[-1][1:] == (3, "")
    # one unverified program in the list refuses the whole measurement before any boot
    with pytest.raises(ControlError, match=digest((SCHED_DIR / "sjf.bpf.c").read_text())):
        plane.measure(["fifo", "sjf"], "batch", 2)
    out = plane.measure(["fifo"], "batch", 2)
    assert out["results"][0]["improvement"] == pytest.approx(1.2)
    assert [r.where for r in plane.box.loads] == ["vm-load", "vm-measure"]
    _safe(plane)


def test_bad_input_is_one_line_and_changes_nothing(tmp_path):
    plane, backend = _plane(tmp_path, reject=lambda src: "R0 invalid mem access 'map_value_or_null'")
    with pytest.raises(ControlError, match="limit is"):
        plane.submit("x" * (control.MAX_SOURCE_BYTES + 1))
    with pytest.raises(ControlError, match="empty"):
        plane.submit("  \n")
    with pytest.raises(ControlError, match="unknown workload"):
        plane.profile("nope")
    with pytest.raises(ControlError, match="unknown program"):
        plane.load("nope")
    with pytest.raises(ControlError, match="no scheduler 'nope'"):
        plane.read("nope")
    src = (SCHED_DIR / "sjf.bpf.c").read_text()
    with pytest.raises(ControlError, match="rejected at stage kernel_verifier .*map_value_or_null"):
        plane.submit(src)
    status = plane.status()
    assert [(p["stage"], p["ok"]) for p in status["programs"]] == [("kernel_verifier", False)]
    assert "map_value_or_null" in status["programs"][0]["reason"]
    assert status["loads"] == [] and backend.verified_paths == []


def test_host_mode_loads_one_verified_scheduler_and_unloads_it(tmp_path, monkeypatch):
    for mod in (tools, control):  # this host has no sched_ext: pretend it has (the double loads)
        monkeypatch.setattr(mod, "host_deploy_problem", lambda: "")
    fifo, sjf = ((SCHED_DIR / f"{n}.bpf.c").read_text() for n in ("fifo", "sjf"))

    off, _ = _plane(tmp_path / "off")
    off.submit(fifo)
    with pytest.raises(ControlError, match="host loads are off"):
        off.load("fifo", target="host")
    assert off.box.loads == [] and off.status()["loaded"]["host"] is None

    plane, backend = _plane(tmp_path / "on", host_mode=True)
    with pytest.raises(ControlError, match="not passed every verifier stage"):
        plane.load("fifo", target="host")
    assert backend.handles == []
    plane.submit(fifo)
    plane.submit(sjf)
    out = plane.load("fifo", target="host")
    assert out["still_loaded"] and plane.status()["loaded"]["host"]["digest"] == digest(fifo)
    with pytest.raises(ControlError, match="loaded on the host already"):
        plane.load("sjf", target="host")
    assert len(backend.handles) == 1 and not backend.handles[0]["closed"]
    assert plane.unload()["unloaded"] == digest(fifo)
    assert backend.handles[0]["closed"] and plane.status()["loaded"]["host"] is None
    assert plane.unload()["unloaded"] is None  # nothing left: a no-op
    _safe(plane)


def test_status_answers_while_the_vm_is_busy(tmp_path):
    """One micro-VM at a time, and status says what holds it (the server keeps answering)."""
    plane, backend = _plane(tmp_path)
    release, entered = threading.Event(), threading.Event()
    verify = backend.verify

    def slow_verify(path: Path, stages: str) -> Any:
        entered.set()
        assert release.wait(60)  # hang guard
        return verify(path, stages)

    backend.verify = slow_verify
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(plane.submit((SCHED_DIR / "fifo.bpf.c").read_text())))
    worker.start()
    try:
        assert entered.wait(60)
        busy = plane.status()["busy"]
        assert busy and busy.startswith("verify ")
        assert not plane._vm.acquire(blocking=False)  # a second VM call would wait its turn
    finally:
        release.set()
        worker.join(60)
    assert result["ok"] and plane.status()["busy"] is None and not plane._vm.locked()


def test_host_mode_is_refused_on_a_non_loopback_http_server(tmp_path, capsys):
    """The HTTP transport has no authentication: a reachable server may not load on the host."""
    from aios.cli import main

    rc = main(["mcp", "--transport", "http", "--bind", "0.0.0.0", "--host-mode", "--workdir", str(tmp_path)])
    assert rc == 2 and "--host-mode is refused with --bind 0.0.0.0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything was set up


def test_measure_records_every_result_in_the_repository(tmp_path):
    """A repository scheduler's result goes under its name; a submitted program gets an ``mcp`` entry of
    its own (and a second measurement adds a second result to it, not a second entry)."""
    plane, backend = _plane(tmp_path, gain=lambda src: 0.3 if "aios_fifo" in src else 0.1)
    repo = backend.repo
    fifo = (SCHED_DIR / "fifo.bpf.c").read_text()
    new = fifo.replace('.name = "aios_fifo"', '.name = "mine"').replace("aios_fifo", "mine")
    assert new != fifo and digest(new) not in {e.source_sha for e in repo.list()}
    entries = len(repo)
    plane.submit(fifo)
    mine = plane.submit(new)["digest"]
    out = plane.measure(["fifo", mine], "batch", 2)
    rec = {r["program"]: r["recorded"] for r in out["results"]}
    assert rec["fifo"]["name"] == "fifo"
    assert rec[mine]["name"] == f"mcp_mine_{mine[:8]}"
    assert len(repo) == entries + 1
    entry = repo.get(rec[mine]["name"])
    assert entry.origin == "mcp" and entry.source == new and entry.source_sha == mine
    (fifo_res,) = repo.results(scheduler="fifo")
    (mine_res,) = repo.results(scheduler=rec[mine]["name"])
    assert fifo_res.workload == "batch" and fifo_res.improvement == pytest.approx(1.3) and fifo_res.reps == 2
    assert mine_res.improvement == pytest.approx(1.1)
    # the repository's own copy of a program, named by its digest, is recorded under the repository name
    again = plane.measure([digest(fifo)], "batch", 1)["results"][0]["recorded"]
    assert again["name"] == "fifo" and len(repo.results(scheduler="fifo")) == 2
    plane.measure([mine], "schbench", 1)
    assert len(repo) == entries + 1 and len(repo.results(scheduler=rec[mine]["name"])) == 2
    assert [r["workload"] for r in plane.read(rec[mine]["name"])["results"]] == ["batch", "schbench"]
    _safe(plane)


def test_include_dirs_only_under_the_servers_roots(tmp_path):
    """-I directories come from the client: each must resolve (symlinks too) inside an include root the
    operator named when starting the server; anything else is refused before compiling."""
    fifo = (SCHED_DIR / "fifo.bpf.c").read_text()
    root = tmp_path / "headers"
    (root / "mine").mkdir(parents=True)
    (root / "escape").symlink_to("/etc")

    off, backend_off = _plane(tmp_path / "off")
    with pytest.raises(ControlError, match="include directories are off"):
        off.submit(fifo, include_dirs=[str(root / "mine")])
    assert backend_off.include_dirs == [] and off.status()["programs"] == []

    plane, backend = _plane(tmp_path / "on", include_roots=(root,))
    for bad, why in ((str(root / "escape"), "outside the server's include roots"),
                     ("/etc", "outside the server's include roots"),
                     (str(root / "mine" / ".." / ".."), "outside the server's include roots"),
                     (str(root / "nope"), "does not exist")):
        with pytest.raises(ControlError, match=why):
            plane.submit(fifo, include_dirs=[bad])
    assert backend.include_dirs == []   # nothing was compiled
    out = plane.submit(fifo, include_dirs=[str(root / "mine")])
    assert out["loadable"] and backend.include_dirs == [(str((root / "mine").resolve()),)]
    # the same source with other directories is verified again (its verdict is rebuilt with them)
    plane.submit(fifo)
    assert backend.include_dirs[-1] == () and len(backend.include_dirs) == 2
    plane.submit(fifo)
    assert len(backend.include_dirs) == 2   # same source, same directories: the verdict stands
