"""Group commit: callers that arrive while a batch is being processed are processed together next.

Why: the expensive step has a large fixed cost per call (an fsync for a storage write, a forward
pass for a sentence encoder on a CPU), so concurrent callers should share one call rather than
queue for one each. No thread, no timer: the first caller to find nothing in progress becomes the
leader and processes everything queued so far, itself included; the others wait on a condition
and are woken with their own result. Each caller gets its answer only after its batch finished;
a batch that raises fails every caller in it (and, for storage, writes none of them).

Used by the storage manager's ``put`` and ``MiniLMEmbedder.embed``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class _Waiter:
    item: Any
    out: Any = None
    error: BaseException | None = None
    done: bool = False

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.out


class GroupCommit(Generic[In, Out]):
    """``submit(item)`` returns ``process(batch)[i]`` for the batch ``item`` went in, at position i.

    ``process`` takes the items of one batch, in arrival order, and returns one output per item.
    """

    def __init__(self, process: Callable[[list[In]], Sequence[Out]]):
        self._process = process
        self._cv = threading.Condition()
        self._queue: list[_Waiter] = []
        self._busy = False
        self.batches = 0  # batches processed (for metrics)

    def queued(self) -> int:
        """Callers waiting for the next batch."""
        with self._cv:
            return len(self._queue)

    def submit(self, item: In) -> Out:
        me = _Waiter(item)
        with self._cv:
            self._queue.append(me)
            while not me.done and self._busy:
                self._cv.wait()
            if me.done:
                return me.result()
            self._busy = True  # this caller processes everything queued so far, itself included
            batch, self._queue = self._queue, []
        try:
            outs = self._process([w.item for w in batch])
            if len(outs) != len(batch):
                raise RuntimeError(f"group commit: {len(outs)} results for a batch of {len(batch)}")
            for w, out in zip(batch, outs, strict=True):
                w.out = out
        except BaseException as exc:  # every caller in the batch gets the error, none hangs
            for w in batch:
                w.error = exc
        finally:
            with self._cv:
                for w in batch:
                    w.done = True
                self._busy = False
                self.batches += 1
                self._cv.notify_all()
        return me.result()
