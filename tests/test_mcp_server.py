"""``aios mcp`` from a real MCP client in a second process (the official ``mcp`` SDK's client).

The server is spawned as ``python -m aios.cli mcp`` and spoken to over stdio with the client's
stdio transport (what a coding agent does), and once over streamable HTTP on loopback. Refusals
are judged from the server's own state (``sched_status``: what it verified, every load it made,
what is loaded), not only from the error text.

The host-side tests (repository, bad input, compile and static rejections) boot nothing; the
``vm`` test boots the micro-VM twice (a program the kernel verifier rejects, and a good one).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from _util import free_port

pytest.importorskip("mcp")

from mcp.client import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "aios" / "sched_ext" / "corpus"
TOOLS = {
    "sched_workloads",
    "sched_profile",
    "sched_search",
    "sched_read",
    "sched_submit",
    "sched_measure",
    "sched_load",
    "sched_unload",
    "sched_status",
}


def _env() -> dict[str, str]:
    """The child runs this checkout's ``aios`` offline."""
    return {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _server_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "-m",
        "aios.cli",
        "mcp",
        "--repository",
        str(tmp_path / "repo"),
        "--embedder",
        "hash",
        "--workdir",
        str(tmp_path / "work"),
        *extra,
    ]


def _stdio(tmp_path: Path, *extra: str) -> Client:
    params = StdioServerParameters(
        command=sys.executable, args=_server_args(tmp_path, *extra), env=_env(), cwd=str(tmp_path)
    )
    return Client(params, read_timeout_seconds=900)


async def _ok(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    r = await client.call_tool(tool, args)
    assert not r.is_error, f"{tool}: {r.content[0].text if r.content else r}"
    return r.structured_content


async def _error(client: Client, tool: str, **args: Any) -> str:
    r = await client.call_tool(tool, args)
    assert r.is_error, f"{tool} should have failed: {r.structured_content}"
    return r.content[0].text


def _needs_setup() -> None:
    from aios.sched_ext import load_setup

    if shutil.which("clang") is None or load_setup() is None:
        pytest.skip("needs clang and `aios sched setup` (vmlinux.h)")


def test_stdio_repository_bad_input_and_host_side_rejections(tmp_path):
    """Lists the tools, searches and reads the repository, refuses bad input with one clear line,
    rejects broken programs at the right stage, refuses to load what is not verified, and keeps
    serving throughout; nothing was ever loaded (the server's own records say so)."""
    _needs_setup()
    syntax = (CORPUS / "c01_syntax_error.bpf.c").read_text()
    unknown_kfunc = (CORPUS / "s01_unknown_kfunc.bpf.c").read_text()

    async def session() -> None:
        async with _stdio(tmp_path) as client:
            listed = await client.list_tools()
            assert {t.name for t in listed.tools} == TOOLS
            assert all(t.description for t in listed.tools)

            names = {w["name"] for w in (await _ok(client, "sched_workloads"))["workloads"]}
            assert {"batch", "schbench"} <= names

            hits = (await _ok(client, "sched_search", query="latency-sensitive server", k=3))["hits"]
            assert len(hits) == 3 and all(h["name"] and "source" not in h for h in hits)
            fifo = await _ok(client, "sched_read", name="fifo")
            assert "struct_ops" in fifo["source"] and not fifo["verified_here"]

            # bad input: one line each, and the server keeps serving
            assert "unknown workload 'nope'" in await _error(client, "sched_profile", workload="nope")
            assert "no scheduler 'nope'" in await _error(client, "sched_read", name="nope")
            big = await _error(client, "sched_submit", source="/* x */\n" * 20_000)
            assert "the limit is" in big and "nothing was compiled" in big
            assert "validation error" in await _error(client, "sched_search", query="x", k=500)

            # broken programs are rejected at the right stage, with the reason
            msg = await _error(client, "sched_submit", source=syntax)
            assert "rejected at stage compile" in msg and "expected ';'" in msg
            msg = await _error(client, "sched_submit", source=unknown_kfunc)
            assert "rejected at stage static" in msg

            # nothing unverified loads: a rejected program, and a repository one never submitted
            bad = msg.split("(program ", 1)[1][:16]
            for program in (bad, "fifo"):
                refusal = await _error(client, "sched_load", program=program)
                assert "not passed every verifier stage" in refusal
            refusal = await _error(client, "sched_measure", programs=["fifo"], workload="batch")
            assert "not passed every verifier stage" in refusal
            refusal = await _error(client, "sched_load", program="fifo", target="host")
            assert "not passed every verifier stage" in refusal
            assert "unknown program" in await _error(client, "sched_load", program="0123456789abcdef")

            status = await _ok(client, "sched_status")
            stages = {p["stage"] for p in status["programs"]}
            assert stages == {"compile", "static"} and not any(p["ok"] for p in status["programs"])
            assert status["loads"] == [] and status["loaded"] == {"host": None, "vm": None}
            assert status["busy"] is None and not status["host"]["can_load"]

    anyio.run(session)


def test_stdio_submit_with_include_dirs_under_the_include_root(tmp_path):
    """sched_submit's include_dirs: a header of the user's own, found through -I under the server's
    --include-root; without the directory the compile fails naming it, and a directory outside the
    root is refused before compiling."""
    _needs_setup()
    root = tmp_path / "headers"
    (root / "mine").mkdir(parents=True)
    (root / "mine" / "my_sched.h").write_text("#define MY_DSQ 0\n#define MY_NAME \"aios_fifo\"\n")
    fifo = (ROOT / "aios" / "sched_ext" / "schedulers" / "fifo.bpf.c").read_text()
    assert "#define SHARED_DSQ 0" in fifo
    src = fifo.replace('#include "aios_scx.h"', '#include "aios_scx.h"\n#include "my_sched.h"', 1).replace(
        "#define SHARED_DSQ 0", "#define SHARED_DSQ MY_DSQ", 1)

    async def session() -> None:
        async with _stdio(tmp_path, "--include-root", str(root)) as client:
            msg = await _error(client, "sched_submit", source=src, quick=True)
            assert "rejected at stage compile" in msg and "my_sched.h" in msg
            msg = await _error(client, "sched_submit", source=src, quick=True, include_dirs=["/usr/include"])
            assert "outside the server's include roots" in msg
            ok = await _ok(client, "sched_submit", source=src, quick=True, include_dirs=[str(root / "mine")])
            assert ok["ok"] and [s["stage"] for s in ok["stages"]] == ["compile", "static"]
            status = await _ok(client, "sched_status")
            # one program (same bytes): its verdict was rebuilt with the -I directory, and nothing loaded
            assert [(p["ok"], p["scope"]) for p in status["programs"]] == [(True, "static")]
            assert status["loads"] == []

    anyio.run(session)


def test_streamable_http_on_loopback(tmp_path):
    """The same server over streamable HTTP: a client connects by URL, lists, searches, reads."""
    port = free_port()
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, *_server_args(tmp_path), "--transport", "http", "--port", str(port)],
        env={**os.environ, **_env()},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 180  # hang guard: imports take seconds
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not listen"
                time.sleep(0.5)

        async def session() -> None:
            async with Client(f"http://127.0.0.1:{port}/mcp", read_timeout_seconds=300) as client:
                assert {t.name for t in (await client.list_tools()).tools} == TOOLS
                hits = (await _ok(client, "sched_search", query="batch jobs finish sooner", k=2))["hits"]
                assert len(hits) == 2
                entry = await _ok(client, "sched_read", name=hits[0]["name"])
                assert entry["name"] == hits[0]["name"] and entry["source"]
                assert "unknown program" in await _error(client, "sched_load", program="nope")
                status = await _ok(client, "sched_status")
                assert status["loads"] == [] and status["programs"] == []

        anyio.run(session)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.vm
@pytest.mark.slow
def test_submit_in_the_vm_rejects_at_the_kernel_verifier_and_passes_a_good_one(tmp_path):
    """Three boots: a program the kernel verifier rejects (reason shown), a repository scheduler
    that passes every stage, and its measurement (stored in the repository); loading the rejected
    one is refused, and nothing else was loaded."""
    _needs_setup()
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs qemu")
    null_deref = (CORPUS / "k01_hash_null_deref.bpf.c").read_text()

    async def session() -> None:
        async with _stdio(tmp_path) as client:
            msg = await _error(client, "sched_submit", source=null_deref)
            assert "rejected at stage kernel_verifier" in msg and "map_value_or_null" in msg
            bad = msg.split("(program ", 1)[1][:16]

            fifo = (await _ok(client, "sched_read", name="fifo"))["source"]
            verdict = await _ok(client, "sched_submit", source=fifo)
            assert verdict["ok"] and verdict["loadable"] and verdict["scope"] == "all"
            assert [s["stage"] for s in verdict["stages"]] == ["compile", "static", "kernel_verifier", "dynamic"]
            assert all(s["ok"] for s in verdict["stages"])
            assert (await _ok(client, "sched_read", name="fifo"))["verified_here"]

            assert "not passed every verifier stage" in await _error(client, "sched_load", program=bad)
            # verified, but this server is not in host mode: the host is never touched
            refusal = await _error(client, "sched_load", program="fifo", target="host")
            assert "host loads are off" in refusal
            status = await _ok(client, "sched_status")
            by_digest = {p["digest"]: p for p in status["programs"]}
            assert by_digest[bad]["stage"] == "kernel_verifier" and not by_digest[bad]["ok"]
            assert by_digest[verdict["digest"]]["ok"] and by_digest[verdict["digest"]]["scope"] == "all"
            assert status["loads"] == [] and status["loaded"]["host"] is None
            print(json.dumps(status["programs"], indent=1))

            # a measurement is recorded in the policy repository: sched_read shows it afterwards
            before = len((await _ok(client, "sched_read", name="fifo"))["results"])
            measured = await _ok(client, "sched_measure", programs=["fifo"], workload="batch", reps=1)
            (row,) = measured["results"]
            assert row["ok"] and row["recorded"]["name"] == "fifo", row
            results = (await _ok(client, "sched_read", name="fifo"))["results"]
            assert len(results) == before + 1 and results[-1]["workload"] == "batch"
            assert results[-1]["improvement"] == pytest.approx(row["improvement"])
            loads = (await _ok(client, "sched_status"))["loads"]
            assert [(r["digest"], r["where"]) for r in loads] == [(verdict["digest"], "vm-measure")]

    anyio.run(session)
