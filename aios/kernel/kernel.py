"""The kernel object: accepts syscalls, routes them to the module that serves them, keeps the records.

There is no global kernel: every piece of state lives on a ``Kernel`` instance, so several
kernels can live in one process (tests rely on it).

Routing:
- ``llm`` syscalls go to the LLM core (``self.llm``), which owns its own scheduler and runs its
  batched steps on one dedicated thread (the model is not thread-safe, and one thread stepping a
  batch is what makes batching possible at all);
- every other kind goes to the handler a module registered with ``register``; those run on a
  small thread pool, so a slow storage write never blocks token generation.

Who is asking is never read from the syscall: ``submit`` takes a credential the kernel issued
(``aios.kernel.identity``) and stamps the syscall's ``agent`` from it; a syscall that names another
agent, or comes without a credential this kernel still honours, is refused (and audited). The
kernel's creator holds ``kernel.owner`` (admin) and spawns agents with ``credential_for``.

Before any handler runs (LLM syscalls included), the access hook (set by the access manager) may
refuse it; a refusal fails that one syscall with a typed error and nothing else.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from aios.kernel.config import KernelConfig
from aios.kernel.identity import Credential, IdentityRegistry, acting
from aios.kernel.syscall import DEFERRED, LLMSyscall, Syscall, SyscallRejected

log = logging.getLogger("aios.kernel")

__all__ = ["Kernel", "KernelConfig", "LLMCore"]  # KernelConfig lives in config.py; re-exported


class LLMCore(Protocol):
    """What the kernel needs from an LLM core (local batched engine or remote backend)."""

    def add(self, syscall: LLMSyscall) -> None: ...

    def step(self) -> bool:
        """Run one scheduling step; return False when there was nothing to do."""
        ...

    def has_work(self) -> bool: ...

    def close(self) -> None: ...


Handler = Callable[[Syscall], Any]
AccessHook = Callable[[Syscall], str | None]  # returns a refusal reason, or None to allow


def build_llm_core(config: KernelConfig) -> LLMCore:
    """The LLM core for a ``KernelConfig``: the local batched engine, or, for
    ``openai:<base_url>#<model>``, the OpenAI-compatible remote core. Each is imported only when
    chosen, so a kernel that never chats never loads torch or a model."""
    if str(config.model).startswith("openai:"):
        from aios.kernel.remote import RemoteLLMCore

        return RemoteLLMCore(config)
    from aios.kernel.engine import LLMEngine
    from aios.kernel.llm import load_model

    model, tokenizer = load_model(config.model, config.device, config.dtype, config.cache_dir, weights=config.weights)
    return LLMEngine(model, tokenizer, config)


class Kernel:
    def __init__(self, config: KernelConfig | None = None, *, llm: LLMCore | None = None, **overrides: Any):
        cfg = (config or KernelConfig()).model_dump()
        cfg.update(overrides)
        self.config = KernelConfig(**cfg)
        self._llm = llm
        self._llm_lock = threading.Lock()
        self._handlers: dict[str, Handler] = {}
        self._access_hook: AccessHook | None = None
        self._outcome_hook: Callable[[Syscall], None] | None = None
        self._pool = ThreadPoolExecutor(max_workers=self.config.workers, thread_name_prefix="aios-sys")
        self._wake = threading.Condition()
        self._stop = False
        self._llm_thread: threading.Thread | None = None
        self._history: deque[Syscall] = deque(maxlen=self.config.history_limit)
        self._history_lock = threading.Lock()
        self.modules: dict[str, Any] = {}
        self.identities: IdentityRegistry  # set by the access manager's installation
        self._install_modules()
        self._owner = self.identities.issue("kernel", "admin")
        self.journal: Any = None  # a GenerationJournal when the kernel has a state directory
        if self.config.state_dir is not None:
            from aios.kernel.journal import GenerationJournal

            self.journal = GenerationJournal(self.config.state_dir)
            self.journal.recover(self)  # generations a previous process left unfinished

    # -- modules ---------------------------------------------------------------------------------
    def _install_modules(self) -> None:
        """Create the managers. Each registers the syscall kinds it serves."""
        from aios.kernel.managers import install_managers

        install_managers(self)

    def register(self, kind: str, handler: Handler) -> None:
        """Serve syscalls of ``kind`` with ``handler`` (runs on the kernel's thread pool)."""
        if kind == LLMSyscall.kind:
            raise ValueError("llm syscalls are served by the LLM core")
        self._handlers[kind] = handler

    def spawn(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the kernel's pool (modules hand admitted work back to it this way)."""
        self._pool.submit(fn)

    def set_access_hook(self, hook: AccessHook, outcome: Callable[[Syscall], None] | None = None) -> None:
        """``hook`` may refuse a syscall before it runs; ``outcome`` is told of each one that finished."""
        self._access_hook = hook
        self._outcome_hook = outcome

    # -- LLM core ----------------------------------------------------------------------------------
    @property
    def llm(self) -> LLMCore:
        """The LLM core, built on first use (a kernel used only for storage never loads a model).

        It is built on the kernel's LLM thread, the thread that then runs every step: all of the
        model's torch work (loading, weight packing, the batch-invariance probe, the forwards) stays
        on one thread. Why: OpenMP (libgomp) keeps a worker pool per thread that ever ran a parallel
        region, and once the pools' threads outnumber the cores it stops spinning between regions,
        so every matmul waits for sleeping workers. Measured on 2 cores: a one-row SmolLM2 decode
        step took 34 ms on a thread other than the one that loaded the model, 17 ms on the same one.
        """
        with self._llm_lock:
            if self._llm is None:
                if self._stop:
                    raise RuntimeError("the kernel is shut down")
                built: Future[LLMCore] = Future()
                self._start_llm_thread(built)
                try:
                    core = built.result()
                except BaseException:
                    self._llm_thread = None  # the thread has ended; a later call tries again
                    raise
                from aios.kernel.managers import wire_llm

                wire_llm(self, core)  # retrieval for LLM syscalls (retrieve_k) from storage
                self._llm = core
            elif self._llm_thread is None and not self._stop:
                self._start_llm_thread(None)
            return self._llm

    def _start_llm_thread(self, built: Future | None) -> None:
        self._llm_thread = threading.Thread(target=self._llm_loop, args=(built,), name="aios-llm", daemon=True)
        self._llm_thread.start()

    def _llm_loop(self, built: Future | None) -> None:
        """Build the core here if asked (``built`` gets it, or the error), then run its steps."""
        if built is not None:
            try:
                core = build_llm_core(self.config)
            except BaseException as exc:  # the caller of ``llm`` raises it
                built.set_exception(exc)
                return
            built.set_result(core)
        else:
            core = self._llm
        while True:
            with self._wake:
                while not self._stop and not core.has_work():
                    self._wake.wait(0.5)
                if self._stop:
                    return
            try:
                core.step()
            except Exception:  # a bug in one step must not kill the kernel: the core fails the batch
                log.exception("LLM core step crashed")

    # -- identity ----------------------------------------------------------------------------------
    @property
    def owner(self) -> Credential:
        """The admin capability of the code that created this kernel.

        Refused inside a non-admin agent's context: agent code holds only its own credential."""
        me = acting()
        if me is not None and self.identities.group(me.agent) != "admin":
            self.identities.refuse(me, "asked for the kernel owner's capability")
            raise PermissionError(f"agent {me.agent!r} may not take the kernel owner's capability")
        return self._owner

    def credential_for(self, name: str, group: str | None = None, *, by: Credential) -> Credential:
        """A credential for agent ``name`` (registered in process if new), issued on ``by``'s authority.

        ``by`` must be an admin credential this kernel issued; inside an agent's context it must be
        that context's own. ``group`` (None: as registered, ``user`` for a new agent) sets the group.
        """
        why = self.identities.verify(by)
        if why is None and self.identities.group(by.agent) != "admin":
            why = f"{by.agent!r} is not an admin"
        me = acting()
        if why is None and me is not None and me is not by and self.identities.verify(me) is None:
            why = f"code running as {me.agent!r} used another agent's credential"
        if why is not None:
            raise self.identities.refuse(by, f"credential_for({name!r}): {why}")
        return self.identities.issue(name, group)

    # -- syscalls ----------------------------------------------------------------------------------
    def submit(self, syscall: Syscall, credential: Credential | None = None) -> Syscall:
        """Accept a syscall (validated already by pydantic) for the agent ``credential`` names and
        queue it. Returns it for chaining.

        Raises ``SyscallRejected`` (``CredentialRejected`` for identity problems, audited) for a
        missing, forged or revoked credential, a syscall naming another agent, one submitted twice,
        a request no module serves or a kernel that is shut down; nothing is queued then.
        """
        if not isinstance(syscall, Syscall):
            raise SyscallRejected(f"expected a Syscall object, got {type(syscall).__name__}")
        why = self.identities.verify(credential)
        me = acting()
        if why is None and me is not None and me is not credential and self.identities.verify(me) is None:
            why = f"code running as {me.agent!r} submitted with another agent's credential"
        if why is None and syscall.agent is not None and syscall.agent != credential.agent:
            why = f"syscall names agent {syscall.agent!r} but the credential is {credential.agent!r}'s"
        if why is None and not syscall.claim():
            why = "this syscall object was submitted already"
        if why is not None:
            raise self.identities.refuse(credential, why, syscall.id)
        syscall.agent = credential.agent
        if self._stop:
            raise SyscallRejected("kernel is shut down")
        if syscall.kind != LLMSyscall.kind and syscall.kind not in self._handlers:
            raise SyscallRejected(f"no module serves {syscall.kind!r} syscalls in this kernel")
        with self._history_lock:
            self._history.append(syscall)
        if self._outcome_hook is not None:
            syscall.add_recorder(self._outcome_hook)
        if syscall.kind == LLMSyscall.kind:
            if self._refused(syscall):
                return syscall
            if self.journal is not None:  # durable before submit returns: acknowledged means kept
                self.journal.attach(self.llm)
                self.journal.submitted(syscall)
            self.llm.add(syscall)
            with self._wake:
                self._wake.notify_all()
        else:
            self._pool.submit(self._serve, syscall)
        return syscall

    def _refused(self, syscall: Syscall) -> bool:
        """Run the access hook; a refusal fails the syscall (True)."""
        if self._access_hook is None:
            return False
        reason = self._access_hook(syscall)
        if reason is None:
            return False
        syscall.fail("PermissionDenied", reason)
        return True

    def _serve(self, syscall: Syscall) -> None:
        try:
            if self._refused(syscall):
                return
            syscall.mark_running()
            result = self._handlers[syscall.kind](syscall)
            if result is not DEFERRED:  # a deferred syscall is completed by its module later
                syscall.complete(result)
        except Exception as exc:  # the error goes to the caller, the kernel carries on
            syscall.fail(getattr(exc, "error_type", type(exc).__name__), str(exc))

    def syscall(self, syscall: Syscall, credential: Credential | None = None, timeout: float | None = None) -> Any:
        """Submit and wait: the blocking form agent code uses."""
        return self.submit(syscall, credential).wait(timeout)

    # -- records -----------------------------------------------------------------------------------
    def history(self, agent: str | None = None, kind: str | None = None) -> list[Syscall]:
        with self._history_lock:
            return [
                s
                for s in self._history
                if (agent is None or s.agent == agent) and (kind is None or s.kind == kind)
            ]

    def adopt(self, syscall: Syscall) -> None:
        """Record a syscall the kernel resubmitted itself (a journaled generation after a restart)."""
        with self._history_lock:
            self._history.append(syscall)
        with self._wake:
            self._wake.notify_all()

    def collect(self, syscall_id: str, credential: Credential | None = None, timeout: float | None = None) -> Any:
        """The result of an LLM syscall by id, for its own agent (or an admin): one in flight or
        resumed after a restart is waited for; one that finished before a restart comes from the
        journal. Raises ``SyscallFailed`` for a failed one, ``KeyError`` for an unknown id."""
        cred = credential or acting() or self._owner
        why = self.identities.verify(cred)
        live = next((s for s in self.history(kind=LLMSyscall.kind) if s.id == syscall_id), None)
        row = self.journal.row(syscall_id) if live is None and self.journal is not None else None
        owner = live.agent if live is not None else (row["agent"] if row else None)
        if owner is None:
            raise KeyError(f"no LLM syscall {syscall_id!r}")
        if why is None and cred.agent != owner and cred.group != "admin":
            why = f"syscall {syscall_id} belongs to {owner!r}"
        if why is not None:
            raise self.identities.refuse(cred, f"collect: {why}", syscall_id)
        if live is not None:
            return live.wait(timeout)
        from aios.kernel.journal import finished_syscall

        return finished_syscall(row).wait(0)

    def cancel_agent(self, agent: str, since: float = 0.0, reason: str = "the agent exited") -> int:
        """Cancel ``agent``'s unfinished syscalls created at or after ``since`` (an agent that died or
        returned leaves nobody to wait for them); returns how many. The LLM core frees their rows."""
        n = sum(s.cancel(reason) for s in self.history(agent=agent) if not s.finished and s.created_at >= since)
        exited = getattr(self._llm, "agent_exited", None)
        if exited is not None:  # its retained conversation KV goes first (prefix_cache)
            exited(agent)
        if n:
            with self._wake:
                self._wake.notify_all()
        return n

    def metrics(self) -> dict[str, Any]:
        """Per-syscall and per-agent waiting/turnaround, tokens and preemptions."""
        done = [s for s in self.history() if s.finished]
        per_agent: dict[str, dict[str, Any]] = {}
        for s in done:
            a = per_agent.setdefault(
                s.agent,
                {"syscalls": 0, "waiting_time": 0.0, "turnaround_time": 0.0, "tokens": 0, "preemptions": 0},
            )
            m = s.metrics()
            a["syscalls"] += 1
            a["waiting_time"] += m["waiting_time"] or 0.0
            a["turnaround_time"] += m["turnaround_time"] or 0.0
            a["tokens"] += m.get("completion_tokens", 0)
            a["preemptions"] += m.get("preemptions", 0)
        return {"syscalls": [s.metrics() for s in done], "agents": per_agent}

    # -- life cycle --------------------------------------------------------------------------------
    def shutdown(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        if self._llm_thread is not None:
            self._llm_thread.join(timeout=30)
        if self._llm is not None:
            self._llm.close()
        self._pool.shutdown(wait=True, cancel_futures=False)
        for module in self.modules.values():
            close = getattr(module, "close", None)
            if close is not None:
                close()
        if self.journal is not None:
            self.journal.close()

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
