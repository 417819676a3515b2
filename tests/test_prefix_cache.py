"""Conversation KV reuse: exact (bit-identical logits, identical tokens), private per agent, bounded, checked.

Counters (prefill tokens computed, tokens reused, hits, corrupt entries) and token ids are asserted;
nothing depends on timing (the eviction test drives the cache with its own clock).
"""

from __future__ import annotations

import pytest
import torch

from aios.kernel.model_runner import Chunk, ModelRunner
from aios.kernel.prefix_cache import PrefixCache
from aios.kernel.syscall import LLMRequest, LLMSyscall

PREAMBLE = " ".join(
    [
        "You are a helpful assistant. The kernel schedules agents that call a language model.",
        "Each agent asks a question, waits for the answer, and may call a tool or read memory.",
        "The weather in Paris is mild; in Oslo it is cold; in Cairo it is hot and dry.",
        "Tools: calculator, search, calendar, weather. Answer with JSON.",
    ]
    * 2
)
QUESTIONS = ["What is the weather in Oslo?", "And in Cairo?", "Which tool would you call next?"]


def converse(engine, agent: str, turns: int = 3, n: int = 10) -> list[list[int]]:
    """A growing conversation: each call repeats the earlier turns (with the answers) plus one question."""
    messages = [{"role": "system", "content": PREAMBLE}]
    answers = []
    for q in QUESTIONS[:turns]:
        messages.append({"role": "user", "content": q})
        sc = LLMSyscall(agent=agent, request=LLMRequest(messages=messages, max_new_tokens=n))
        engine.add(sc)
        engine.run_until_idle()
        assert sc.status.value == "done", sc.error
        answers.append(sc.result.token_ids)
        messages.append({"role": "assistant", "content": sc.result.text})
        messages.append({"role": "tool", "content": f"tool result {len(answers)}: 42"})
    return answers


def test_reuse_computes_only_new_tokens_and_changes_no_token(make_engine):
    plain = make_engine(kv_reuse=False)
    reuse = make_engine(kv_reuse=True)
    ref = converse(plain, "a")
    got = converse(reuse, "a")
    assert got == ref
    p, r = plain.stats(), reuse.stats()
    assert p["prefill_reused_tokens"] == 0
    assert r["prefix_cache"]["hits"] == 2
    # every prompt token is either computed or reused, and reuse saved most of turns 2 and 3
    assert r["prefill_tokens"] + r["prefill_reused_tokens"] == p["prefill_tokens"]
    assert r["prefill_tokens"] < 0.6 * p["prefill_tokens"]
    # turns 2 and 3 reused more than the earlier prompts: the answers' KV (from decode steps) too
    assert r["prefill_reused_tokens"] > plain.records[0]["prompt_tokens"] + plain.records[1]["prompt_tokens"]


def test_reused_kv_gives_bit_identical_logits(tiny_lm):
    """The exactness argument itself: KV from a prefill plus decode steps, continued by a prefill
    from any position, gives the logits and KV of one fresh prefill, bit for bit."""
    model, tok = tiny_lm
    g = torch.Generator().manual_seed(1)
    first = torch.randint(5, len(tok), (150,), generator=g).tolist()
    answer = torch.randint(5, len(tok), (9,), generator=g).tolist()
    second = first + answer + torch.randint(5, len(tok), (37,), generator=g).tolist()
    runner = ModelRunner(model, 4, max_len=512)
    runner.run([Chunk(1, first, 0)])  # turn 1: prompt, then the answer token by token (decode rows)
    for i, t in enumerate(answer):
        runner.run([Chunk(1, [t], len(first) + i), Chunk(3, [7], 0)])  # someone else shares the step
    keep = len(first) + len(answer) - 3  # any position works, not only whole chunks
    runner.cache.write(2, runner.cache.read(1, keep))
    reused = runner.run([Chunk(2, second[keep:], keep)])
    fresh = runner.run([Chunk(0, second, 0)])
    assert torch.equal(fresh, reused)
    kv_fresh, kv_reused = runner.cache.read(0, len(second)), runner.cache.read(2, len(second))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(kv_fresh, kv_reused, strict=True))


def test_reuse_matches_plain_transformers_generate(make_engine, tiny_lm):
    model, tok = tiny_lm
    eng = make_engine(kv_reuse=True)
    converse(eng, "a", turns=2)
    messages = [{"role": "system", "content": PREAMBLE}, {"role": "user", "content": "Summarize."}]
    sc = LLMSyscall(agent="a", request=LLMRequest(messages=messages, max_new_tokens=10))
    eng.add(sc)
    eng.run_until_idle()
    assert eng.stats()["prefix_cache"]["hits"] == 2  # the preamble came from the retained KV
    ids = torch.tensor([eng.render(messages)])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False)
    want = out[0, ids.shape[1] :].tolist()
    if want and want[-1] == tok.eos_token_id:
        want = want[:-1]
    assert sc.result.token_ids == want


def test_another_agents_conversation_is_never_reused(make_engine):
    eng = make_engine(kv_reuse=True)
    converse(eng, "alice", turns=1)
    before = eng.stats()["prefill_tokens"]
    # bob sends alice's first prompt: it matches her retained KV token for token, but he is another agent
    converse(eng, "bob", turns=1)
    st = eng.stats()
    assert st["prefix_cache"]["hits"] == 0 and st["prefill_reused_tokens"] == 0
    assert st["prefill_tokens"] - before == before  # bob computed his whole prompt
    converse(eng, "alice", turns=2)  # alice's entry was not consumed by bob
    assert eng.stats()["prefix_cache"]["hits"] >= 1


def test_corrupted_retained_kv_on_disk_is_detected_and_recomputed(make_engine):
    ref = converse(make_engine(kv_reuse=False), "a", turns=2)
    eng = make_engine(kv_reuse=True, kv_retain_mb=0)  # every entry goes to disk
    messages = [{"role": "system", "content": PREAMBLE}, {"role": "user", "content": QUESTIONS[0]}]
    sc = LLMSyscall(agent="a", request=LLMRequest(messages=messages, max_new_tokens=10))
    eng.add(sc)
    eng.run_until_idle()
    (entry,) = eng.prefix.entries["a"]
    assert entry.handle.location == "disk"
    data = bytearray(entry.handle.path.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte inside the tensor data
    entry.handle.path.write_bytes(bytes(data))
    messages += [
        {"role": "assistant", "content": sc.result.text},
        {"role": "tool", "content": "tool result 1: 42"},
        {"role": "user", "content": QUESTIONS[1]},
    ]
    sc2 = LLMSyscall(agent="a", request=LLMRequest(messages=messages, max_new_tokens=10))
    eng.add(sc2)
    eng.run_until_idle()
    st = eng.stats()
    assert st["prefix_cache"]["corrupt"] == 1 and st["prefill_reused_tokens"] == 0
    assert [sc.result.token_ids, sc2.result.token_ids] == ref


def _kv(n: int) -> list:
    return [(torch.zeros(2, n, 8), torch.zeros(2, n, 8))]  # 2 * n * 8 * 4 bytes * 2 = 128 n bytes


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("exited", [True, False])
def test_eviction_exited_first_then_idle_then_waiting_on_tools(tmp_path, exited):
    clock = Clock()
    mb = 1024 * 1024
    # room for two 16-token entries in memory (2 KiB each) and one on disk
    cache = PrefixCache(memory_mb=4096 / mb, disk_mb=2048 / mb, grace_s=10, ttl_s=100, spill_dir=str(tmp_path), clock=clock)
    cache.retain("old", list(range(16)), _kv)
    clock.t = 5.0
    cache.retain("recent", list(range(100, 116)), _kv)
    if exited:
        cache.agent_exited("recent")
    clock.t = 12.0  # "old" is past its grace, "recent" is within it (in a tool call)
    cache.retain("new", list(range(200, 216)), _kv)
    where = {a: es[0].handle.location for a, es in cache.entries.items()}
    if exited:  # the exited agent's KV is dropped outright, nobody else moves
        assert "recent" not in where and where == {"old": "device", "new": "device"}
        assert cache.stats.dropped == 1
    else:  # the idle one goes to disk; the one waiting on a tool stays in memory
        assert where == {"old": "disk", "recent": "device", "new": "device"}
    clock.t = 200.0  # nobody came back: everything expires, memory and disk are empty
    assert cache.take("old", list(range(16)) + [1, 2]) is None
    assert cache.entries == {} and cache.stats.bytes_in_memory == 0 and cache.stats.bytes_on_disk == 0
    assert cache.stats.expired == (2 if exited else 3)
    cache.close()


def test_retained_kv_serves_the_longest_common_prefix(tmp_path):
    cache = PrefixCache(spill_dir=str(tmp_path))
    tokens = list(range(40))
    cache.retain("a", tokens, lambda n: [(torch.arange(n).float()[None, :, None], torch.zeros(1, n, 1))])
    assert cache.take("b", tokens + [7]) is None  # another agent
    n, kv = cache.take("a", tokens[:20] + [999] * 30)
    assert n == 20 and kv[0][0].shape[1] == 20 and kv[0][0][0, -1, 0] == 19
    assert cache.take("a", tokens) is None  # taken
    cache.retain("a", tokens, lambda n: [(torch.zeros(1, n, 1), torch.zeros(1, n, 1))])
    n, _ = cache.take("a", tokens)
    assert n == 39  # the same prompt again: one token is left to compute (its logits start the answer)
    cache.close()
