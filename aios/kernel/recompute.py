"""Rebuilding a sequence's KV cache from its token ids, exactly.

Why this exists: a suspended generation's KV is an optimisation over its tokens. When the KV is
gone (a spilled file truncated or corrupted, a spill that hit a full disk, a kernel restarted from
its journal), the generation continues from the tokens instead of failing or resuming from garbage.

Why it is exact: the KV at position ``p`` of a row depends only on that row's tokens ``0..p``. The
original generation computed it with one prefill of the prompt (at the prompt's own length) and then
one batch-invariant decode forward per generated token (fixed row count, per-row attention: see
``model_runner``). Replaying the *same* forwards (the prompt prefill, then each already-generated
token fed back at its position) gives bit-identical keys and values, so the tokens that follow are
the ones an uninterrupted run produces. With ``batch_invariant=False`` the replay is close but not
bit-exact (the decode's numerics then depend on the batch size); the caller reports it either way.

Cost: one prefill plus one decode forward per generated token, all beams of the sequence in the same
forward. A generation is recomputed at most once per lost snapshot.
"""

from __future__ import annotations

from typing import Any


def recompute_kv(runner: Any, seq: Any) -> int:
    """Write the KV of every beam of ``seq`` into ``seq.slots`` from its token ids.

    ``seq.output_ids`` and ``seq.kv_len`` must already be the snapshot's (the context manager's
    ``restore`` puts them back before it finds the KV lost). Returns the number of forwards run.
    """
    prompt = list(seq.prompt_ids)
    beams = len(seq.output_ids)
    if len(seq.slots) < beams:
        raise RuntimeError(f"recompute needs {beams} slots, the sequence holds {len(seq.slots)}")
    for j in range(beams):
        runner.prefill(seq.slots[j], prompt)
    generated_in_kv = seq.kv_len - len(prompt)  # the newest token of each beam is not in the KV yet
    for k in range(generated_in_kv):
        runner.decode([(seq.slots[j], seq.output_ids[j][k], len(prompt) + k) for j in range(beams)])
    return beams + generated_in_kv
