"""Group commit (``aios.kernel.group_commit``), the batching under storage puts and MiniLM encodes.

Properties checked from recorded batches, never from timing: callers that queue while a batch runs
go together into the next one, each gets its own output, and a failing batch fails every caller in
it and no other. The first batch is held open (an event) until the others are seen queued, so the
grouping does not depend on thread luck; waits are hang guards only.
"""

from __future__ import annotations

import threading

import pytest
from _util import wait_until

from aios.kernel.group_commit import GroupCommit

HANG_GUARD_S = 30.0


def _run_grouped(process, first_item, items):
    """Submit ``first_item``, then ``items`` from threads while the first batch is held; returns
    (results by item, errors by item, the GroupCommit, the release event)."""
    release = threading.Event()
    started = threading.Event()

    def held(batch):
        if not started.is_set():
            started.set()
            assert release.wait(HANG_GUARD_S)
        return process(batch)

    gc = GroupCommit(held)
    results, errors = {}, {}

    def call(item):
        try:
            results[item] = gc.submit(item)
        except Exception as exc:
            errors[item] = exc

    first = threading.Thread(target=call, args=(first_item,))
    first.start()
    assert started.wait(HANG_GUARD_S)
    others = [threading.Thread(target=call, args=(i,)) for i in items]
    for t in others:
        t.start()
    assert wait_until(lambda: gc.queued() == len(items), HANG_GUARD_S)
    release.set()
    for t in [first, *others]:
        t.join(HANG_GUARD_S)
    return results, errors, gc


def test_callers_queued_during_a_batch_share_the_next_one():
    batches = []

    def process(batch):
        batches.append(list(batch))
        return [x * 10 for x in batch]

    results, errors, gc = _run_grouped(process, 0, [1, 2, 3, 4])
    assert errors == {}
    assert results == {0: 0, 1: 10, 2: 20, 3: 30, 4: 40}  # each caller its own output
    assert batches[0] == [0] and sorted(batches[1]) == [1, 2, 3, 4] and len(batches) == 2
    assert gc.batches == 2


def test_a_failing_batch_fails_all_its_callers_and_no_other():
    def process(batch):
        if 3 in batch:
            raise ValueError("bad batch")
        return batch

    results, errors, gc = _run_grouped(process, 0, [1, 2, 3])
    assert results == {0: 0}
    assert set(errors) == {1, 2, 3} and all(isinstance(e, ValueError) for e in errors.values())
    assert gc.submit(7) == 7  # the next batch works


def test_a_wrong_number_of_outputs_is_an_error_not_a_silent_mismatch():
    gc = GroupCommit(lambda batch: [])
    with pytest.raises(RuntimeError, match="0 results for a batch of 1"):
        gc.submit("x")
