"""A ``Sequence``: the engine's per-request state while an LLM syscall is being generated.

It is a plain dataclass (nano-vllm style): the scheduler reads it, the model runner fills it, the
context manager snapshots the parts that are not plain Python (KV cache, generator state). One
sequence occupies ``num_rows`` rows of the batch: one for greedy/sampling, one per beam for beam
search.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from aios.kernel.context import Snapshot
    from aios.kernel.syscall import LLMSyscall


class SeqStatus(Enum):
    WAITING = auto()  # never ran: needs a prefill
    RUNNING = auto()  # holds batch rows (slots) with its KV in the batch cache
    SUSPENDED = auto()  # lost its rows; its state lives in a Snapshot
    FINISHED = auto()


@dataclass
class Sequence:
    syscall: LLMSyscall
    prompt_ids: list[int]
    max_new_tokens: int
    arrival: float  # monotonic time the engine accepted it
    seq_id: int  # from the engine's own counter (several kernels in one process share no state)
    status: SeqStatus = SeqStatus.WAITING
    num_beams: int = 1

    # generation state, one entry per beam (a single entry without beam search)
    output_ids: list[list[int]] = field(default_factory=lambda: [[]])
    beam_scores: list[float] = field(default_factory=lambda: [0.0])
    finished_beams: list[tuple[float, list[int]]] = field(default_factory=list)  # (normalized score, ids)
    choice_nodes: list[Any] = field(default_factory=list)  # per beam: current node of the choices trie
    choice_trie: Any = None  # root of the choices trie (None: unconstrained)
    choice_index: int | None = None  # which choice was produced
    beam_score: float | None = None

    # sampling
    seed: int = 0
    generator: torch.Generator | None = None

    # stop-string progress: characters of decoded output already searched
    stop_scan: int = 0
    stop_text: str | None = None  # output text cut at the stop string, once hit

    # where the sequence's KV lives
    slots: list[int] = field(default_factory=list)  # batch-cache slots while RUNNING
    kv_len: int = 0  # tokens in its KV cache (prompt + generated - 1 once decoding)
    snapshot: Snapshot | None = None

    # scheduling bookkeeping
    ready_since: float = 0.0  # when it last entered the ready queue (priority aging)
    ready_order: int = 0  # ticket taken when it last entered the ready queue (round-robin order)
    waited: float = 0.0  # total seconds spent in the ready queue (priority aging)
    quantum_used: int = 0  # tokens generated since it last got the CPU
    preemptions: int = 0
    predicted_tokens: int = 0  # SJF estimate of the completion length
    prefill_computed: int = 0  # prompt tokens whose KV this request's prefill computed (not reused)
    prefix_reused: int = 0  # prompt tokens whose KV came from the agent's earlier call (prefix_cache)

    finish_reason: str | None = None
    context_actions: list[str] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return self.num_beams

    @property
    def agent(self) -> str:
        return self.syscall.agent

    @property
    def request(self):
        return self.syscall.request

    @property
    def tokens_generated(self) -> int:
        return len(self.output_ids[0]) if self.output_ids else 0

    @property
    def last_tokens(self) -> list[int]:
        """The newest token of each beam: sampled, but not yet in the KV cache."""
        return [ids[-1] for ids in self.output_ids]

    def __hash__(self) -> int:
        return self.seq_id

    def __eq__(self, other: object) -> bool:
        return self is other
