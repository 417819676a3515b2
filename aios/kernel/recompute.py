"""Rebuilding a sequence's KV cache from its token ids, exactly.

Why this exists: a suspended generation's KV is an optimisation over its tokens. When the KV is
gone (a spilled file truncated or corrupted, a spill that hit a full disk, a kernel restarted from
its journal), the generation continues from the tokens instead of failing or resuming from garbage.

Why it is exact: the KV at position ``p`` of a row depends only on that row's tokens ``0..p``, and
with the batch-invariant runner (see ``model_runner``, ``attention``) a token's keys and values have
the same bits whether it was computed in a prompt chunk or as a decode row, alone or among others.
So one forward of each beam's prompt plus its generated tokens (all but the newest, which is not in
the KV yet) rebuilds bit-identical keys and values, and the tokens that follow are the ones an
uninterrupted run produces. With ``batch_invariant=False`` the replay is close but not bit-exact;
the caller reports it either way.

Cost: one forward over the prompt and the generated tokens, all beams together. A generation is
recomputed at most once per lost snapshot.
"""

from __future__ import annotations

from typing import Any


def recompute_kv(runner: Any, seq: Any) -> int:
    """Write the KV of every beam of ``seq`` into ``seq.slots`` from its token ids.

    ``seq.output_ids`` and ``seq.kv_len`` must already be the snapshot's (the context manager's
    ``restore`` puts them back before it finds the KV lost). Returns the number of forwards run.
    """
    from aios.kernel.model_runner import Chunk

    prompt = list(seq.prompt_ids)
    beams = len(seq.output_ids)
    if len(seq.slots) < beams:
        raise RuntimeError(f"recompute needs {beams} slots, the sequence holds {len(seq.slots)}")
    generated_in_kv = seq.kv_len - len(prompt)  # the newest token of each beam is not in the KV yet
    runner.run([Chunk(seq.slots[j], prompt + seq.output_ids[j][:generated_in_kv], 0) for j in range(beams)])
    return 1
