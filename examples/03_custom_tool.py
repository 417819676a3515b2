"""A custom tool: register a Python function with the kernel's tool manager, then call it.

The tool's argument schema comes from the type hints (validated by pydantic), and the same
function is offered to the model as an OpenAI-style tool. Agents call it with ``aios.tool_call``.

    python examples/03_custom_tool.py [MODEL]
"""

import sys

import aios

model = sys.argv[1] if len(sys.argv) > 1 else "smollm2"


def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


with aios.Kernel(model=model) as kernel:
    kernel.modules["tools"].register(word_count, timeout=5)

    with aios.agent_context(kernel, "writer"):
        print("tools I may use:", [t["function"]["name"] for t in aios.tools_list()])
        print("direct call:", aios.tool_call("word_count", {"text": "the quick brown fox"})["result"])

        # Offer the tool to the model; run whatever calls it makes and show the results.
        reply = aios.chat(
            "How many words are in 'to be or not to be'? Use the word_count tool.",
            tools=[t for t in aios.tools_list() if t["function"]["name"] == "word_count"],
            max_new_tokens=48,
        )
        print("model said:", reply.text.strip()[:200])
        if reply.response.tool_calls:
            for msg in aios.run_tool_calls(reply.response.tool_calls):
                print("tool result:", msg["content"])
        else:
            print("(the model answered without calling the tool; small models often do)")
