"""The example agents on the tiny random-weight model: nonsense text, but every agent must finish.

They also run with the kernel's managers (calculator tool, memory, storage) and fall back to
their in-process equivalents on a bare kernel; both paths are exercised.
"""

from __future__ import annotations

import pytest

import aios
from aios.agents import AGENTS, PAPER_AGENTS
from aios.agents._common import extract_expression, extract_json, safe_eval
from aios.agents.travel import parse_trip


def test_registry():
    assert set(PAPER_AGENTS) <= set(AGENTS)
    for name, cls in AGENTS.items():
        assert cls.description and cls.default_task, name


@pytest.mark.parametrize("name", list(AGENTS))
def test_each_agent_runs_on_the_tiny_model(tiny_kernel, name):
    agent = AGENTS[name](scale=0.25)
    run = agent.start(tiny_kernel)
    assert run.ok, run.error
    assert isinstance(run.output, dict) and run.output.get("summary") is not None
    llm = [s for s in run.syscalls if s["kind"] == "llm"]
    expected = {"math": 2, "narrative": 3, "recommendation": 2, "travel": 3, "chat": 1}[name]
    assert len(llm) == expected


def test_agents_use_the_kernel_managers(tiny_kernel):
    runs = aios.run_all(
        tiny_kernel, [(AGENTS[n](scale=0.25), None) for n in ("math", "recommendation", "travel")]
    )
    assert all(r.ok for r in runs), [r.error for r in runs]
    out = {r.agent: r.output for r in runs}
    assert out["math"]["calculator"] in {"kernel", None}  # None: no expression in nonsense text
    assert out["recommendation"]["memory"] == "kernel" and out["recommendation"]["storage"] == "kernel"
    assert out["travel"]["storage"] == "kernel"
    kinds = {s.kind for s in tiny_kernel.history()}
    assert {"llm", "memory", "storage", "tool"} <= kinds


def test_preferences_accumulate_across_runs(tiny_kernel):
    agent = AGENTS["recommendation"](scale=0.25)
    first = agent.start(tiny_kernel, "I like sushi and quiet places.")
    second = agent.start(tiny_kernel, "Something cheap please.")
    assert first.ok and second.ok
    # the second run still knows about sushi (recalled from memory/storage)
    assert "Sakura Sushi Bar" in second.output["candidates"]


def test_agents_concurrently_with_failures_isolated(tiny_kernel):
    class Broken(aios.Agent):
        def run(self, task):
            aios.chat("hi", max_new_tokens=2)
            raise RuntimeError("mid-run failure")

    runs = aios.run_all(tiny_kernel, [(AGENTS["narrative"](scale=0.25), None), (Broken("broken"), None)])
    assert runs[0].ok and not runs[1].ok and "mid-run failure" in runs[1].error


def test_parsers_are_robust():
    assert extract_expression("so 12 * 3 = 36, then 50 - 36") in {"50 - 36", "12 * 3"}
    assert extract_expression("no math here") is None
    assert safe_eval("2 ** 3 + 1") == 9 and safe_eval("__import__('os')") is None and safe_eval("1/0") is None
    assert extract_json('blah {"origin": "boston", "x": {"y": 1}} tail') == {
        "origin": "boston",
        "x": {"y": 1},
    }
    assert extract_json("{not json") == {}
    trip = parse_trip("garbage", "Plan a 4-day trip from Seattle to Austin")
    assert trip == {"origin": "seattle", "destination": "austin", "nights": 3}
    trip = parse_trip('{"origin": "Chicago", "destination": "Boston", "nights": 2}', "anything")
    assert trip == {"origin": "chicago", "destination": "boston", "nights": 2}
