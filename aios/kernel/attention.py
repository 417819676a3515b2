"""Ragged attention in one batched call, with a fixed reduction order per query.

Each query row attends to its own sequence's keys ``[0, n)`` (decode: the whole row; prefill:
causal within the prompt). Rows have different lengths, so their keys are gathered into one block
of ``L`` positions, ``L`` a multiple of ``CHUNK``, with the tail masked. That block's size depends
on the longest row in the batch, so a plain softmax/matmul over ``L`` would make a row's result
depend on its neighbours (a reduction's blocking and vector tails change with its length; measured
here: ``F.scaled_dot_product_attention`` over a masked, padded block differs from the unpadded one
by ~1e-7). To make a row's numerics independent of ``L``, every reduction over keys is split:

1. scores per chunk: ``q @ k_chunk^T`` (the dot products run over ``head_dim``, never over ``L``),
   plus an additive 0/-inf mask;
2. the row max over all chunks (a max is exact in any order), ``e = exp(s - max)``;
3. per chunk, ``e_chunk @ v_chunk`` and ``sum(e_chunk)`` (reductions of a fixed length ``CHUNK``);
4. the per-chunk partial results summed over chunks with ``cumsum`` (a sequential scan), whose
   last entry is the total: chunks past a row's length hold exact zeros, and adding zeros at the
   end of a sequential sum changes nothing.

A query row's result therefore depends only on its own keys, as long as each matmul's row results
do not depend on the number of rows; ``batch_invariance`` measures from how many rows (``attn_rows``)
that holds and the queries are padded to it.

The same argument lets a prompt skip work: a key chunk wholly past a query's position only adds
exact zeros at the end of its sums (and ``-inf`` to its max), so leaving it out gives the same bits.
``query_blocks`` splits a prompt's queries into blocks of ``CHUNK`` positions, each attending only
to the chunks up to its own (causal attention at about half the cost of the full square).
"""

from __future__ import annotations

import itertools

import torch

CHUNK = 64  # keys per chunk (q @ k^T kernels are row- and size-stable from 64 columns on this CPU)


def padded_len(n: int) -> int:
    return max(CHUNK, -(-n // CHUNK) * CHUNK)


def attention_bias(qpos: torch.Tensor, key_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask for ``ragged_attention``: ``qpos [R, M]`` -> ``[R, 1, nc, M, CHUNK]`` of 0 / -inf.

    Query ``m`` of row ``r`` sees keys ``0..qpos[r, m]``. Built once per forward (all layers share it).
    """
    R, M = qpos.shape
    nc = key_len // CHUNK
    keypos = torch.arange(key_len, device=qpos.device).view(1, 1, nc, 1, CHUNK)
    visible = keypos <= qpos.view(R, 1, 1, M, 1)
    return torch.zeros(visible.shape, dtype=dtype, device=qpos.device).masked_fill_(~visible, float("-inf"))


def query_blocks(qpos: list[list[int]], min_rows: int, block: int) -> list[tuple[int, int, int]]:
    """``(row_start, row_end, key_chunks)`` per block of ``block`` query rows (the last blocks merged
    so that each has at least ``min_rows``): ``key_chunks`` is how many chunks the block's furthest
    query needs. ``qpos [R][M]`` as for ``attention_bias``; the rows of every sequence are split alike."""
    M = len(qpos[0])
    bounds = list(range(0, M, block)) + [M]
    while len(bounds) > 2 and bounds[-1] - bounds[-2] < min_rows:
        del bounds[-2]
    return [(a, b, max(max(row[a:b]) for row in qpos) // CHUNK + 1) for a, b in itertools.pairwise(bounds)]


def blocked_attention(q, k, v, bias, blocks: list[tuple[int, int, int]]) -> torch.Tensor:
    """``ragged_attention`` per query block over only the key chunks it needs (see ``query_blocks``)."""
    if len(blocks) == 1 and blocks[0][2] * CHUNK == k.shape[2]:
        return ragged_attention(q, k, v, bias)
    parts = []
    for a, b, c in blocks:
        L = c * CHUNK
        parts.append(ragged_attention(q[:, :, a:b], k[:, :, :L], v[:, :, :L], bias[:, :, :c, a:b]))
    return torch.cat(parts, dim=2)


def ragged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``q [R, KVH, M, D]`` (already scaled) over ``k, v [R, KVH, L, D]``, ``L % CHUNK == 0``.

    ``bias`` is ``attention_bias(...)``. Queries of the ``g`` heads sharing a KV head are stacked in
    ``M`` (grouped-query attention without repeating K/V). Every query must see at least key 0
    (padding queries use position 0). Returns ``[R, KVH, M, D]``.
    """
    R, KVH, L, D = k.shape
    nc = L // CHUNK
    s = torch.matmul(q.unsqueeze(2), k.view(R, KVH, nc, CHUNK, D).transpose(-1, -2))  # [R, KVH, nc, M, C]
    s = s + bias
    e = torch.exp(s - s.amax(dim=(2, 4), keepdim=True))
    num = torch.matmul(e, v.view(R, KVH, nc, CHUNK, D)).cumsum(dim=2)[:, :, -1]  # [R, KVH, M, D]
    den = e.sum(dim=-1).cumsum(dim=2)[:, :, -1]  # [R, KVH, M]
    return num / den.unsqueeze(-1)
