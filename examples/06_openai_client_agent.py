"""An agent written with nothing but the official ``openai`` client, scheduled by the aios kernel.

    aios serve --data-dir ./state &                                   # the kernel (embedded SmolLM2)
    export AIOS_TOKEN=$(aios agent add weather-bot --data-dir ./state)  # this agent's identity
    python examples/06_openai_client_agent.py [http://127.0.0.1:8000]

No aios import: the API key is the agent's kernel-issued token, so the kernel knows who calls,
schedules each request as an LLM syscall of this agent together with every other agent's, and
audits it. The tool runs here, in the agent's own process, as in any OpenAI tool loop;
``extra_body`` carries the kernel's own fields (here a priority: lower is served first).
"""

import json
import os
import sys

from openai import OpenAI

url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("AIOS_URL", "http://127.0.0.1:8000")
client = OpenAI(base_url=url.rstrip("/") + "/v1", api_key=os.environ["AIOS_TOKEN"])
model = client.models.list().data[0].id
print("model:", model)

WEATHER = {"paris": "mild, 18 C", "oslo": "cold, -3 C", "cairo": "hot and dry, 35 C"}
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]  # fmt: skip


def get_weather(city: str = "") -> str:
    return WEATHER.get(str(city).lower(), f"no weather known for {city!r}")


messages = [
    {"role": "system", "content": "You answer questions about the weather. Use the get_weather tool."},
    {"role": "user", "content": "What is the weather in Paris?"},
]
for _ in range(3):  # a few rounds: the model may call tools, then answers
    reply = client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, max_tokens=64, extra_body={"priority": -1}
    )
    message = reply.choices[0].message
    messages.append(message.model_dump(exclude_none=True))
    if not message.tool_calls:
        break
    for call in message.tool_calls:
        try:
            args = json.loads(call.function.arguments)
            result = get_weather(**args) if call.function.name == "get_weather" else "unknown tool"
        except (TypeError, ValueError) as exc:  # the model's arguments are untrusted input
            result = f"error: {exc}"
        print(f"tool {call.function.name}({call.function.arguments}) -> {result}")
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
print("answer:", (message.content or "").strip())
print("kernel:", reply.aios)  # the syscall behind the answer: its id, agent, waiting/turnaround times

print("streamed: ", end="")
stream = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Say hello in French."}], max_tokens=24, stream=True
)
for chunk in stream:
    print(chunk.choices[0].delta.content or "", end="", flush=True)
print()
