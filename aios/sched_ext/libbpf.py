"""ctypes bindings over the system libbpf (libbpf.so.1) and the host-mode loader.

Why ctypes: no maintained Python binding exists on PyPI (``libbpf-python``
does not exist, ``pylibbpf`` is alpha), and the calls needed are few: open an
object, inspect its maps and programs, load it, attach the struct_ops map
(a link), read maps, detach and close.

Host mode is for users whose own kernel has sched_ext, running as root.  It
refuses — with a message saying why — when the kernel lacks sched_ext, when
not root, when another scheduler is attached, or when the object was not
verified (``VerifyResult.ok`` for the same bytes).  A loaded scheduler is
unloaded on context exit and at interpreter exit (atexit), so a crashed
Python process does not leave a scheduler behind (the kernel also drops the
link when the process's file descriptors close).

Public API::

    lib = Libbpf()                          # raises LibbpfError when libbpf.so.1 is missing
    with BpfObject.open(path) as obj:       # no kernel interaction
        obj.name, obj.maps() -> list[MapDesc], obj.programs() -> list[ProgDesc]
        obj.initial_value(map_name) -> bytes
    host_preflight(sysfs=...) -> None       # raises HostModeRefused
    with HostScheduler(obj_path, verified=verify_result) as s:
        s.read_map(name) -> bytes;  s.exit_info() -> dict;  s.state()
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .loader import SCX_SYSFS, SchedExtState, read_host_state


class LibbpfError(RuntimeError):
    pass


class HostModeRefused(RuntimeError):
    """Host-mode loading is not possible or not allowed here; the message says why."""


BPF_MAP_TYPE_STRUCT_OPS = 26

_MAP_TYPES = {1: "hash", 2: "array", 5: "percpu_hash", 6: "percpu_array", 9: "lru_hash", 12: "array_of_maps",
              26: "struct_ops", 27: "ringbuf", 29: "inode_storage", 30: "task_storage", 33: "user_ringbuf",
              34: "cgrp_storage", 35: "arena"}


class Libbpf:
    """Handle on libbpf.so.1 with argument/return types declared once."""

    def __init__(self, path: str | None = None) -> None:
        name = path or ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            self.lib = ctypes.CDLL(name, use_errno=True)
        except OSError as e:
            raise LibbpfError(f"cannot load libbpf ({name}): {e}; sudo apt-get install libbpf1") from e
        L, P, c = self.lib, ctypes.c_void_p, ctypes
        sig = {
            "bpf_object__open_file": (P, [c.c_char_p, P]),
            "bpf_object__name": (c.c_char_p, [P]),
            "bpf_object__load": (c.c_int, [P]),
            "bpf_object__close": (None, [P]),
            "bpf_object__next_map": (P, [P, P]),
            "bpf_object__next_program": (P, [P, P]),
            "bpf_map__name": (c.c_char_p, [P]),
            "bpf_map__type": (c.c_int, [P]),
            "bpf_map__fd": (c.c_int, [P]),
            "bpf_map__key_size": (c.c_uint32, [P]),
            "bpf_map__value_size": (c.c_uint32, [P]),
            "bpf_map__max_entries": (c.c_uint32, [P]),
            "bpf_map__initial_value": (P, [P, c.POINTER(c.c_size_t)]),
            "bpf_map__set_initial_value": (c.c_int, [P, c.c_void_p, c.c_size_t]),
            "bpf_map__set_value_size": (c.c_int, [P, c.c_uint32]),
            "bpf_object__find_map_by_name": (P, [P, c.c_char_p]),
            "bpf_map__attach_struct_ops": (P, [P]),
            "bpf_program__name": (c.c_char_p, [P]),
            "bpf_program__section_name": (c.c_char_p, [P]),
            "bpf_link__destroy": (c.c_int, [P]),
            "bpf_map_lookup_elem": (c.c_int, [c.c_int, P, P]),
            "libbpf_get_error": (c.c_long, [P]),
        }
        for fn, (res, args) in sig.items():
            f = getattr(L, fn)
            f.restype, f.argtypes = res, args

    def version(self) -> str:
        try:
            f = self.lib.libbpf_version_string
            f.restype = ctypes.c_char_p
            return f().decode()
        except AttributeError:
            return "unknown"


@dataclass
class MapDesc:
    name: str
    type: str
    type_id: int
    key_size: int
    value_size: int
    max_entries: int


@dataclass
class ProgDesc:
    name: str
    section: str


def _errno_msg(what: str) -> str:
    e = ctypes.get_errno()
    return f"{what}: {os.strerror(e) if e else 'failed'} (errno {e})"


class BpfObject:
    """An opened (not necessarily loaded) BPF object; close() frees it."""

    def __init__(self, lib: Libbpf, handle: int, path: Path) -> None:
        self._lib = lib
        self._h = handle
        self.path = path
        self.loaded = False

    @classmethod
    def open(cls, path: Path | str, lib: Libbpf | None = None) -> BpfObject:
        lib = lib or Libbpf()
        path = Path(path)
        if not path.is_file():
            raise LibbpfError(f"{path}: no such object")
        h = lib.lib.bpf_object__open_file(str(path).encode(), None)
        if not h:
            raise LibbpfError(_errno_msg(f"bpf_object__open_file({path})"))
        return cls(lib, h, path)

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._h:
            self._lib.lib.bpf_object__close(self._h)
            self._h = None

    @property
    def handle(self) -> int:
        if not self._h:
            raise LibbpfError("object is closed")
        return self._h

    @property
    def name(self) -> str:
        return self._lib.lib.bpf_object__name(self.handle).decode()

    def _maps(self) -> list[int]:
        out, m = [], None
        while True:
            m = self._lib.lib.bpf_object__next_map(self.handle, m)
            if not m:
                return out
            out.append(m)

    def maps(self) -> list[MapDesc]:
        L = self._lib.lib
        res = []
        for m in self._maps():
            t = L.bpf_map__type(m)
            res.append(MapDesc(L.bpf_map__name(m).decode(), _MAP_TYPES.get(t, str(t)), t, L.bpf_map__key_size(m),
                               L.bpf_map__value_size(m), L.bpf_map__max_entries(m)))
        return res

    def programs(self) -> list[ProgDesc]:
        L = self._lib.lib
        out, p = [], None
        while True:
            p = L.bpf_object__next_program(self.handle, p)
            if not p:
                return out
            out.append(ProgDesc(L.bpf_program__name(p).decode(), L.bpf_program__section_name(p).decode()))

    def _map(self, name: str) -> int:
        L = self._lib.lib
        exact = L.bpf_object__find_map_by_name(self.handle, name.encode())  # also by section: ".rodata"
        if exact:
            return exact
        for m in self._maps():
            n = L.bpf_map__name(m).decode()
            if n == name or n.endswith(name):
                return m
        raise LibbpfError(f"no map named {name!r} in {self.path.name}")

    def initial_value(self, map_name: str) -> bytes:
        """Initial contents of a global-data map (.rodata/.data/.bss) before load."""
        size = ctypes.c_size_t(0)
        ptr = self._lib.lib.bpf_map__initial_value(self._map(map_name), ctypes.byref(size))
        if not ptr:
            raise LibbpfError(f"map {map_name} has no initial value")
        return ctypes.string_at(ptr, size.value)

    def set_initial_value(self, map_name: str, data: bytes) -> None:
        """Replace a global-data map's contents before load (``.rodata`` tunables, SCX enums)."""
        buf = ctypes.create_string_buffer(data, len(data))
        rc = self._lib.lib.bpf_map__set_initial_value(self._map(map_name), buf, len(data))
        if rc != 0:
            raise LibbpfError(f"bpf_map__set_initial_value({map_name}): {os.strerror(-rc) if rc < 0 else rc}")

    def set_value_size(self, map_name: str, size: int) -> None:
        """Resize a global-data map before load (upstream's ``RESIZE_ARRAY``)."""
        rc = self._lib.lib.bpf_map__set_value_size(self._map(map_name), int(size))
        if rc != 0:
            raise LibbpfError(f"bpf_map__set_value_size({map_name}, {size}): {os.strerror(-rc) if rc < 0 else rc}")

    def load(self) -> None:
        """Load into the running kernel: only HostScheduler calls this, after its checks."""
        rc = self._lib.lib.bpf_object__load(self.handle)
        if rc != 0:
            raise LibbpfError(f"bpf_object__load failed: {os.strerror(-rc) if rc < 0 else rc}")
        self.loaded = True

    def lookup(self, map_name: str, key: bytes | int = 0) -> bytes:
        if not self.loaded:
            raise LibbpfError("object not loaded")
        L = self._lib.lib
        m = self._map(map_name)
        ks, vs = L.bpf_map__key_size(m), L.bpf_map__value_size(m)
        kbuf = ctypes.create_string_buffer(key.to_bytes(ks, "little") if isinstance(key, int) else key, ks)
        vbuf = ctypes.create_string_buffer(vs)
        rc = L.bpf_map_lookup_elem(L.bpf_map__fd(m), kbuf, vbuf)
        if rc != 0:
            raise LibbpfError(_errno_msg(f"lookup in {map_name}"))
        return vbuf.raw


def host_preflight(sysfs: Path | str = SCX_SYSFS, euid: int | None = None) -> SchedExtState:
    """Raise ``HostModeRefused`` unless this host can take a sched_ext scheduler right now."""
    st = read_host_state(sysfs)
    if not st.available:
        raise HostModeRefused(
            f"this kernel ({os.uname().release}) has no sched_ext ({sysfs} is absent: CONFIG_SCHED_CLASS_EXT "
            "is off). Schedulers run in the micro-VM instead: `aios sched verify` / `aios sched bench`.")
    if (os.geteuid() if euid is None else euid) != 0:
        raise HostModeRefused("loading a scheduler on the host needs root (CAP_BPF + CAP_SYS_ADMIN)")
    if st.state != "disabled":
        raise HostModeRefused(f"another sched_ext scheduler is attached ({st.ops or 'unknown'}, state "
                              f"{st.state}); stop it first")
    return st


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class HostScheduler:
    """Load a *verified* scheduler on the host; unloads on exit, on ``close()`` and at interpreter exit.

    Before load it does what the scheduler's loader would (``prepare.plan_load``) for *this*
    machine: the SCX enum globals from ``btf`` (the running kernel's BTF), tunables from its
    possible CPUs, ``RESIZE_ARRAY`` sizes — through libbpf's ``bpf_map__set_initial_value`` and
    ``bpf_map__set_value_size``; the micro-VM path applies the same plan to the object file.
    ``source`` (default: the verdict's) locates the companion loader; ``overrides`` are ``--set``.
    """

    def __init__(self, obj_path: Path | str, verified: Any, sysfs: Path | str = SCX_SYSFS,
                 lib: Libbpf | None = None, source: Path | str | None = None,
                 overrides: dict[str, int] | None = None, btf: Path | str = "/sys/kernel/btf/vmlinux") -> None:
        self.obj_path = Path(obj_path)
        self.verified = verified
        self.sysfs = Path(sysfs)
        self._lib = lib
        self._obj: BpfObject | None = None
        self._links: list[int] = []
        src = source or getattr(verified, "source", None)
        self.source = Path(src) if src else self.obj_path
        self.overrides = overrides
        self.btf = Path(btf)
        self.plan: Any = None
        self.last_exit: dict = {}

    def _check_verified(self) -> None:
        v = self.verified
        if v is None or not getattr(v, "ok", False):
            raise HostModeRefused("refusing to load an unverified scheduler on the host: run the verifier "
                                  "(all four stages) first")
        want = (getattr(v, "facts", {}) or {}).get("object_sha256")
        if want and want != _sha256(self.obj_path):
            raise HostModeRefused(f"{self.obj_path} differs from the object that was verified")

    def __enter__(self) -> HostScheduler:
        self.load()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self) -> None:
        self._check_verified()
        host_preflight(self.sysfs)
        self._obj = BpfObject.open(self.obj_path, self._lib)
        if not any(m.type_id == BPF_MAP_TYPE_STRUCT_OPS for m in self._obj.maps()):
            ver = self._obj._lib.version()
            self.close()
            raise HostModeRefused(f"the system libbpf ({ver}) does not see this object's struct_ops map "
                                  "(.struct_ops.link needs libbpf >= 1.3); use the bpftool wrapper or a newer libbpf")
        try:
            self._initialize()
            self._obj.load()
            L = self._obj._lib.lib
            for m in self._obj._maps():
                if L.bpf_map__type(m) != BPF_MAP_TYPE_STRUCT_OPS:
                    continue
                link = L.bpf_map__attach_struct_ops(m)
                if not link or L.libbpf_get_error(link):
                    raise LibbpfError(_errno_msg("bpf_map__attach_struct_ops"))
                self._links.append(link)
        except BaseException:
            self.close()
            raise
        atexit.register(self.close)

    def _initialize(self) -> None:
        """Apply the loader's pre-load initialization for this machine (refuses what cannot be inferred)."""
        from .prepare import host_target, plan_load

        raw = self.obj_path.read_bytes()
        self.plan = plan_load(self.source, raw, host_target(self.btf), self.overrides)
        if self.plan.problems:
            raise HostModeRefused(self.plan.problems[0])
        assert self._obj is not None
        for section, size in self.plan.resizes.items():
            self._obj.set_value_size(section, size)
        if self.plan.values:
            self._obj.set_initial_value(".rodata", self.plan.rodata_image(raw))

    def state(self) -> SchedExtState:
        return read_host_state(self.sysfs)

    def read_map(self, name: str, key: bytes | int = 0) -> bytes:
        if self._obj is None:
            raise LibbpfError("not loaded")
        return self._obj.lookup(name, key)

    def exit_info(self, name: str = "uei") -> dict:
        """The exit record (``UEI_DEFINE`` or ``AIOS_UEI_DEFINE``: kind, exit_code, reason, msg) in ``.data``.

        Both layouts keep ``kind`` at 0, ``exit_code`` at 8, ``reason[128]`` at 16 and ``msg`` at 144
        (256 bytes in aios's, 1024 in upstream's): the symbol's size says which.
        """
        from .elf import ElfObject

        sym = ElfObject(self.obj_path.read_bytes()).symbol(name, ".data")
        if sym is None:
            return {}
        return parse_exit_record(self.read_map(".data"), sym.value, sym.size - 144)

    def unload(self, timeout_s: float = 5.0) -> dict:
        """Detach the scheduler, wait for the kernel to report ``disabled``, return its exit record."""
        import time

        if self._obj is None:
            return self.last_exit
        L = self._obj._lib.lib
        for link in self._links:
            L.bpf_link__destroy(link)
        self._links.clear()
        deadline = time.monotonic() + timeout_s
        while self.state().state not in ("disabled", "") and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            self.last_exit = self.exit_info()
        except LibbpfError:
            self.last_exit = {}
        self.close()
        return self.last_exit

    def close(self) -> None:
        if self._obj is not None:
            L = self._obj._lib.lib
            for link in self._links:
                L.bpf_link__destroy(link)
            self._links.clear()
            self._obj.close()
            self._obj = None
        try:
            atexit.unregister(self.close)
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass


def parse_exit_record(raw: bytes, offset: int = 0, msg_len: int = 256) -> dict:
    """Decode an exit record: s32 kind; (s32 exit_cpu upstream); s64 exit_code; char reason[128]; char msg[N]."""
    import struct as _st

    if msg_len <= 0 or len(raw) < offset + 144 + msg_len:
        return {}
    kind, = _st.unpack_from("<i", raw, offset)
    code, = _st.unpack_from("<q", raw, offset + 8)
    reason = raw[offset + 16:offset + 144].split(b"\0", 1)[0].decode(errors="replace")
    msg = raw[offset + 144:offset + 144 + msg_len].split(b"\0", 1)[0].decode(errors="replace")
    return {"kind": kind, "exit_code": code, "reason": reason, "msg": msg}


__all__ = ["Libbpf", "BpfObject", "HostScheduler", "HostModeRefused", "LibbpfError", "host_preflight",
           "parse_exit_record", "MapDesc", "ProgDesc"]
