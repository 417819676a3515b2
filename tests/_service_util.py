"""Helpers for the service tests: run ``aios serve`` and ``aios agent`` as real subprocesses.

Everything goes through ``[sys.executable, "-m", "aios.cli", ...]`` with this checkout first on
``PYTHONPATH``, so the subprocesses run the code under test. Deadlines are hang guards only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STARTUP_GUARD_S = 600  # a loaded 2-core machine imports torch + transformers slowly; only a hang guard


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def aios_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aios.cli", *args], capture_output=True, text=True,
                          env=child_env(), timeout=timeout, cwd=REPO)  # fmt: skip


def mint(data_dir: Path, name: str, group: str = "user") -> str:
    done = aios_cli("agent", "add", name, "--group", group, "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith("aios_") and "\n" not in token, done.stdout
    return token


@dataclass
class Served:
    url: str
    socket: str
    pid: int
    proc: subprocess.Popen
    data_dir: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(model_dir: str | Path, data_dir: Path, *extra: str) -> Served:
    data_dir.mkdir(parents=True, exist_ok=True)
    ready, log = data_dir / "ready.json", data_dir / "serve.log"
    ready.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "aios.cli", "serve", "--model", str(model_dir), "--embedder", "hash",
           "--data-dir", str(data_dir), "--port", "0", "--ready-file", str(ready), "-q", *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=child_env(), cwd=REPO)
    deadline = time.monotonic() + STARTUP_GUARD_S
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"aios serve exited with {proc.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"aios serve not ready after {STARTUP_GUARD_S}s:\n{log.read_text()}")
        time.sleep(0.2)
    where = json.loads(ready.read_text())
    return Served(where["url"], where["unix_socket"], where["pid"], proc, data_dir, log)


def stop_server(served: Served, timeout: float = 300) -> int:
    if served.proc.poll() is None:
        served.proc.send_signal(signal.SIGTERM)
    try:
        return served.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        served.proc.kill()
        raise
