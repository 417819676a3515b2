"""Tool calls: how tools are shown to a model and how its calls are read back.

Rendering: the chat template's own ``tools=`` argument when the template uses it; otherwise (e.g.
SmolLM2's template ignores tools) a system message listing the tools as JSON and asking for the
format SmolLM2 was tuned on::

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

Parsing (``parse_tool_calls``) accepts that format (an object or a list of objects inside the
tags, ``arguments`` as an object or a JSON string, ``parameters`` as a synonym), and falls back to
bare JSON objects with ``name`` and ``arguments`` in the text. A malformed call raises
``ToolCallError`` with a message a person can act on; the engine reports it in the response
instead of failing the request. The tool manager reuses these functions.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aios.kernel.syscall import ToolCall

_TAG = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)

TOOL_SYSTEM_PROMPT = (
    "You can call these tools. To call one, answer with exactly\n"
    '<tool_call>{{"name": "<tool name>", "arguments": {{<arguments as JSON>}}}}</tool_call>\n'
    "and nothing else. Tools:\n{tools}"
)


class ToolCallError(ValueError):
    error_type = "ToolCallError"


def template_supports_tools(tokenizer) -> bool:
    tpl = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(tpl, dict):
        tpl = " ".join(tpl.values())
    return "tools" in tpl


def tools_system_message(tools: list[dict[str, Any]]) -> dict[str, str]:
    """The fallback system message for templates without tool support."""
    return {"role": "system", "content": TOOL_SYSTEM_PROMPT.format(tools=json.dumps(tools, indent=1))}


def _to_call(obj: Any, where: str) -> ToolCall:
    if not isinstance(obj, dict):
        raise ToolCallError(f"{where}: expected a JSON object with 'name' and 'arguments', got {type(obj).__name__}")
    if "function" in obj and isinstance(obj["function"], dict):  # OpenAI shape
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise ToolCallError(f"{where}: tool call without a 'name' string: {json.dumps(obj)[:200]}")
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            raise ToolCallError(f"{where}: arguments of {name!r} are not valid JSON: {exc}") from exc
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ToolCallError(f"{where}: arguments of {name!r} must be a JSON object, got {type(args).__name__}")
    return ToolCall(name=name, arguments=args)


def parse_tool_calls(text: str) -> list[ToolCall]:
    """The tool calls in a model's output (empty list when it made none); ``ToolCallError`` if malformed."""
    calls: list[ToolCall] = []
    blocks = _TAG.findall(text)
    if blocks:
        for i, block in enumerate(blocks):
            block = block.strip()
            where = f"tool call {i + 1}"
            if block.startswith("```"):
                block = block.strip("`").removeprefix("json").strip()
            try:
                obj = json.loads(block)
            except json.JSONDecodeError as exc:
                raise ToolCallError(f"{where}: not valid JSON ({exc.msg} at char {exc.pos}): {block[:200]!r}") from exc
            for item in obj if isinstance(obj, list) else [obj]:
                calls.append(_to_call(item, where))
        return calls
    # no tags: look for bare JSON objects that look like calls
    dec = json.JSONDecoder()
    i = 0
    while True:
        i = min((p for p in (text.find("{", i), text.find("[", i)) if p >= 0), default=-1)
        if i < 0:
            break
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        items = obj if isinstance(obj, list) else [obj]
        if items and all(isinstance(o, dict) and "name" in o and ("arguments" in o or "parameters" in o) for o in items):
            calls.extend(_to_call(o, f"tool call {len(calls) + 1}") for o in items)
        i = end
    return calls
