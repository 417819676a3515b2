"""Engine behaviour: context-window policies, sampling options, stop strings, choices, tools,
retrieval hook, bad requests, crashes contained, and the kernel around it."""

from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError

from aios.kernel.syscall import LLMRequest, LLMSyscall, SyscallFailed
from aios.kernel.tool_calls import ToolCallError, parse_tool_calls


def call(agent="a", content="hello there", n=10, **kw) -> LLMSyscall:
    return LLMSyscall(agent=agent, request=LLMRequest(messages=[{"role": "user", "content": content}], max_new_tokens=n, **kw))


def submit(kernel, c: LLMSyscall) -> LLMSyscall:
    """Submit as the agent the call names (the kernel's owner issues its credential)."""
    return kernel.submit(c, kernel.credential_for(c.agent, by=kernel.owner))


def run(engine, *calls):
    for c in calls:
        engine.add(c)
    engine.run_until_idle()
    return calls


# -- context window ------------------------------------------------------------------------------


def long_chat(turns: int = 12) -> list[dict]:
    msgs = [{"role": "system", "content": "You are a careful assistant."}]
    for i in range(turns):
        msgs.append({"role": "user", "content": f"turn {i}: tell me about the weather in Paris and Oslo " * 2})
        msgs.append({"role": "assistant", "content": f"answer {i}: it is mild in Paris and cold in Oslo " * 2})
    msgs.append({"role": "user", "content": "final question: and in Cairo?"})
    return msgs


def test_truncate_drops_oldest_turns_keeps_system_and_last_user(make_engine):
    eng = make_engine(context_window=160, context_policy="truncate")
    c = LLMSyscall(agent="a", request=LLMRequest(messages=long_chat(), max_new_tokens=16))
    run(eng, c)
    res = c.result
    assert c.status.value == "done", c.error
    assert res.prompt_tokens + 16 <= 160
    assert any("dropped" in a for a in res.context_actions)
    # what was kept: the system message, the newest turns, the last user turn; the oldest went first
    from aios.kernel.context import fit_prompt

    msgs = long_chat()
    fit = fit_prompt(eng.render, eng.tokenizer, msgs, 160 - 16)
    assert fit.messages[0] == msgs[0] and fit.messages[-1] == msgs[-1]
    assert fit.dropped == msgs[1 : 1 + len(fit.dropped)]
    assert fit.messages[1:] == msgs[1 + len(fit.dropped) :]


def test_truncate_cuts_middle_of_single_long_turn(make_engine):
    eng = make_engine(context_window=128, context_policy="truncate")
    c = call(content="start of the task. " + "filler words here " * 200 + " the actual question?", n=16)
    run(eng, c)
    assert c.status.value == "done", c.error
    assert c.result.prompt_tokens + 16 <= 128
    assert any("middle" in a for a in c.result.context_actions)


def test_summarize_uses_the_model_then_answers(make_engine):
    eng = make_engine(context_window=200, context_policy="summarize")
    c = LLMSyscall(agent="a", request=LLMRequest(messages=long_chat(), max_new_tokens=16))
    others = [call(f"o{i}", n=8) for i in range(3)]  # the nested generation shares the engine
    run(eng, c, *others)
    assert c.status.value == "done", c.error
    assert any("summarized" in a for a in c.result.context_actions)
    assert c.result.prompt_tokens + 16 <= 200
    assert all(o.status.value == "done" for o in others)


def test_budget_larger_than_window_is_rejected_clearly(make_engine):
    eng = make_engine(context_window=64)
    c = call(n=64)
    eng.add(c)
    assert c.status.value == "failed" and c.error.type == "ContextTooLong"
    ok = run(eng, call(n=8))[0]
    assert ok.status.value == "done"


def test_generation_stops_at_window(make_engine):
    eng = make_engine(context_window=48)
    c = call(n=40)
    run(eng, c)
    assert c.status.value == "done"
    assert c.result.prompt_tokens + c.result.completion_tokens <= 48


# -- decoding options ------------------------------------------------------------------------------


def test_seed_recorded_and_reproducible(make_engine):
    eng = make_engine()
    a = call(temperature=1.0, n=16)
    run(eng, a)
    assert a.result.seed is not None
    b = call(temperature=1.0, n=16, seed=a.result.seed)
    run(eng, b)
    assert a.result.token_ids == b.result.token_ids
    c = call(temperature=1.0, n=16, seed=a.result.seed + 1)
    run(eng, c)
    assert c.result.token_ids != a.result.token_ids


def test_stop_strings_trim_output(make_engine):
    eng = make_engine()
    full = run(eng, call(n=24))[0].result
    text = full.text
    assert len(text) > 12
    stop = text[6:9]
    cut = text.find(stop)
    res = run(eng, call(n=24, stop=[stop, "zzzz-never"]))[0].result
    assert res.finish_reason == "stop"
    assert res.text == text[:cut]
    assert res.completion_tokens < full.completion_tokens


def test_choices_constrain_output(make_engine):
    eng = make_engine()
    choices = ["yes", "no", "maybe later", "red green blue"]
    for kw in ({}, {"temperature": 1.0, "seed": 3}, {"num_beams": 3}):
        res = run(eng, call(content="pick one", n=20, choices=choices, **kw))[0].result
        assert res.finish_reason == "choice", kw
        assert res.text in choices


def test_beam_search_scores_and_beats_greedy(make_engine):
    eng = make_engine()
    greedy = run(eng, call(n=10, length_penalty=0.0))[0].result
    beam = run(eng, call(n=10, num_beams=4, length_penalty=0.0))[0].result
    assert beam.beam_score is not None
    model = eng.model
    import torch

    def logprob(prompt_ids, ids):
        with torch.inference_mode():  # transformers' own forward on the same weights
            lp = torch.log_softmax(model(torch.tensor([prompt_ids + ids])).logits[0].float(), -1)
        n = len(prompt_ids)
        return sum(lp[n - 1 + i, t].item() for i, t in enumerate(ids))

    prompt = eng.render([{"role": "user", "content": "hello there"}])
    assert logprob(prompt, beam.token_ids) >= logprob(prompt, greedy.token_ids) - 1e-3


# -- tools ---------------------------------------------------------------------------------------------


def test_parse_tool_calls_formats():
    calls = parse_tool_calls('<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call>')
    assert [(c.name, c.arguments) for c in calls] == [("weather", {"city": "Paris"})]
    calls = parse_tool_calls('ok <tool_call>[{"name": "a", "arguments": "{\\"x\\": 1}"}, {"name": "b"}]</tool_call>')
    assert [(c.name, c.arguments) for c in calls] == [("a", {"x": 1}), ("b", {})]
    calls = parse_tool_calls('Calling: {"name": "calc", "parameters": {"expr": "2+2"}} done')
    assert calls[0].name == "calc" and calls[0].arguments == {"expr": "2+2"}
    assert parse_tool_calls("no calls here {not json}") == []
    with pytest.raises(ToolCallError, match="not valid JSON"):
        parse_tool_calls('<tool_call>{"name": "x", "arguments": {</tool_call>')
    with pytest.raises(ToolCallError, match="name"):
        parse_tool_calls('<tool_call>{"arguments": {}}</tool_call>')
    with pytest.raises(ToolCallError, match="JSON object"):
        parse_tool_calls('<tool_call>{"name": "x", "arguments": [1]}</tool_call>')


def test_tools_are_rendered_and_errors_reported(make_engine, monkeypatch):
    eng = make_engine()
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    ids = eng.render([{"role": "user", "content": "weather?"}], tools)
    assert "get_weather" in eng.tokenizer.decode(ids)
    # malformed tool output becomes an error field in the response, not a failure
    monkeypatch.setattr(eng.tokenizer, "decode", lambda *a, **k: '<tool_call>{"name": oops</tool_call>')
    res = run(eng, call(n=4, tools=tools))[0]
    assert res.status.value == "done"
    assert res.result.tool_calls == [] and "not valid JSON" in res.result.tool_call_error


# -- retrieval hook ---------------------------------------------------------------------------------------


def test_retrieval_hook(make_engine):
    eng = make_engine()
    seen = []

    def retriever(agent, query, k):
        seen.append((agent, query, k))
        return ["Paris is mild", "Oslo is cold"]

    plain = run(eng, call(content="weather?"))[0]
    eng.retriever = retriever
    c = run(eng, call(agent="trip", content="weather?", retrieve_k=2))[0]
    assert seen == [("trip", "weather?", 2)]
    assert c.result.prompt_tokens > plain.result.prompt_tokens
    eng.retriever = None
    missing = call(retrieve_k=1)
    eng.add(missing)
    assert missing.status.value == "failed" and missing.error.type == "RetrievalUnavailable"


# -- bad requests and crashes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"messages": []},
        {"messages": [{"role": "wizard", "content": "x"}]},
        {"messages": [{"role": "user", "content": "x"}], "temperature": -1},
        {"messages": [{"role": "user", "content": "x"}], "num_beams": 2, "temperature": 0.5},
        {"messages": [{"role": "user", "content": "x"}], "stop": [""]},
        {"messages": [{"role": "user", "content": "x"}], "max_new_tokens": 0},
        {"messages": [{"role": "user", "content": "x"}], "bogus": 1},
    ],
)
def test_bad_requests_rejected_kernel_keeps_serving(tiny_kernel, bad):
    with pytest.raises(ValidationError):
        LLMSyscall(agent="a", request=LLMRequest(**bad))
    out = submit(tiny_kernel, call(n=4)).wait(60)
    assert out.completion_tokens == 4


def test_engine_rejects_what_it_cannot_serve(tiny_kernel):
    too_wide = submit(tiny_kernel, call(n=4, num_beams=16))
    with pytest.raises(SyscallFailed, match="num_beams"):
        too_wide.wait(30)
    assert submit(tiny_kernel, call(n=4)).wait(60).completion_tokens == 4


def test_crash_in_one_request_fails_only_it(make_engine, monkeypatch):
    eng = make_engine(scheduler="rr", quantum=2)
    runner = eng.runner
    real_run = runner.run
    poison = eng.render([{"role": "user", "content": "poison"}])

    def run_chunks(chunks):
        if any(c.ids == poison for c in chunks):
            raise RuntimeError("boom")
        return real_run(chunks)

    monkeypatch.setattr(runner, "run", run_chunks)
    good = [call(f"g{i}", n=8) for i in range(3)]
    bad = call("bad", content="poison")
    run(eng, good[0], bad, *good[1:])
    assert bad.status.value == "failed" and bad.error.type == "EngineError" and "boom" in bad.error.message
    assert all(g.status.value == "done" for g in good)
    assert sorted(eng.runner.free_slots) == list(range(8))  # nothing leaked


def test_crash_in_batched_forward_is_retried_per_sequence_exactly(make_engine, monkeypatch):
    """A forward that fails once (e.g. a transient allocation failure) is re-run per sequence: nobody
    fails, and, rows being batch-invariant, everyone's tokens equal an undisturbed run's."""
    calm = make_engine()
    expected = [c.result.token_ids for c in run(calm, *[call(f"a{i}", n=8) for i in range(3)])]
    eng = make_engine()
    real = eng.runner.run
    state = {"n": 0}

    def flaky(chunks):
        state["n"] += 1
        if state["n"] == 3:
            raise RuntimeError("decode exploded")
        return real(chunks)

    monkeypatch.setattr(eng.runner, "run", flaky)
    calls = run(eng, *[call(f"a{i}", n=8) for i in range(3)])
    assert state["n"] > 3 + 3  # the failed forward was followed by one forward per sequence
    assert [c.result.token_ids for c in calls] == expected


def test_decode_that_always_fails_fails_its_requests_then_recovers(make_engine, monkeypatch):
    eng = make_engine()
    real = eng.runner.run

    def broken(chunks):
        if all(len(c.ids) == 1 for c in chunks):
            raise RuntimeError("decode exploded")
        return real(chunks)

    monkeypatch.setattr(eng.runner, "run", broken)
    first = [call(f"a{i}", n=8) for i in range(2)]
    run(eng, *first)
    assert all(c.status.value == "failed" and "decode exploded" in c.error.message for c in first)
    monkeypatch.setattr(eng.runner, "run", real)
    later = run(eng, call("b", n=8))[0]
    assert later.status.value == "done"
    assert sorted(eng.runner.free_slots) == list(range(8))


def test_agent_raising_mid_run_leaves_others_unaffected(tiny_kernel):
    results: dict[str, object] = {}

    def agent(name: str, explode: bool) -> None:
        try:
            r1 = submit(tiny_kernel, call(name, f"{name} first", n=6)).wait(120)
            if explode:
                raise RuntimeError("agent bug")
            r2 = submit(tiny_kernel, call(name, f"{name} second", n=6)).wait(120)
            results[name] = (r1.completion_tokens, r2.completion_tokens)
        except RuntimeError as exc:
            results[name] = exc

    threads = [threading.Thread(target=agent, args=(f"agent{i}", i == 1)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert isinstance(results["agent1"], RuntimeError)
    for i in (0, 2, 3):
        assert results[f"agent{i}"] == (6, 6)
    m = tiny_kernel.metrics()
    assert m["agents"]["agent0"]["syscalls"] == 2 and m["agents"]["agent1"]["syscalls"] == 1
    assert all(s["waiting_time"] is not None and s["turnaround_time"] >= s["waiting_time"] for s in m["syscalls"])


async def _chat_async(kernel, n):
    import asyncio

    calls = [submit(kernel, call(f"async{i}", n=5)) for i in range(n)]
    return await asyncio.gather(*(c.wait_async() for c in calls))


def test_kernel_concurrent_async_agents(tiny_kernel):
    import asyncio

    outs = asyncio.run(_chat_async(tiny_kernel, 6))
    assert [o.completion_tokens for o in outs] == [5] * 6
    st = tiny_kernel.llm.stats()
    assert st["completed"] >= 6 and st["tokens_per_s"] > 0


def test_two_kernels_in_one_process(tiny_lm):
    from aios.kernel.engine import LLMEngine
    from aios.kernel.kernel import Kernel

    model, tok = tiny_lm
    with Kernel(scheduler="fifo", llm=LLMEngine(model, tok, scheduler="fifo")) as k1, Kernel(
        scheduler="rr", llm=LLMEngine(model, tok, scheduler="rr", quantum=1)
    ) as k2:
        a = submit(k1, call("x", n=6))
        b = submit(k2, call("x", n=6))
        assert a.wait(60).token_ids == b.wait(60).token_ids
        assert len(k1.history()) == len(k2.history()) == 1


def test_engines_over_one_model_share_one_packed_copy(tiny_lm):
    """Every runner over one model uses the same weight objects (one packed copy per model, not one
    per engine); a deepcopy of the model, or one whose weights changed dtype, gets its own."""
    import copy

    import torch

    from aios.kernel.model_runner import ModelRunner

    model, _ = tiny_lm
    a, b = ModelRunner(model, 2), ModelRunner(model, 4)
    assert a.lm_head is b.lm_head and all(x is y for x, y in zip(a.layers, b.layers, strict=True))
    twin = copy.deepcopy(model)
    c = ModelRunner(twin, 2)
    assert c.lm_head is not a.lm_head and c.layers[0].qkv.weight.data_ptr() != a.layers[0].qkv.weight.data_ptr()
    d = ModelRunner(twin.to(torch.bfloat16), 2)
    assert d.lm_head is not c.lm_head and d.layers[0].qkv.weight.dtype == torch.bfloat16
