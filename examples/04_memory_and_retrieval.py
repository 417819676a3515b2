"""Memory and retrieval: short-term memory, durable storage, search by meaning, and retrieval
augmented chat (the kernel puts the agent's most relevant stored items into the prompt).

    python examples/04_memory_and_retrieval.py [MODEL]
"""

import sys

import aios

model = sys.argv[1] if len(sys.argv) > 1 else "smollm2"

with aios.Kernel(model=model) as kernel, aios.agent_context(kernel, "assistant"):
    # short-term memory: lives while the agent runs (quota-limited, evicted to storage under pressure)
    aios.memory_add("The user's name is Ada.")
    aios.memory_add("Ada is allergic to peanuts.")
    print("memory search:", [m["content"] for m in aios.memory_search("food allergy", k=1)])

    # durable storage: on disk when the call returns, indexed for search by meaning (MiniLM)
    aios.storage_put("trip", "Ada flies to Lisbon on 12 June and stays at Hotel Azul.")
    aios.storage_put("car", "Ada's car is a blue 2015 hatchback, due for service in May.")
    print("storage search:", [s["key"] for s in aios.storage_search("where is Ada travelling?", k=1)])

    # retrieval-augmented chat: the kernel adds the 1 most relevant stored item to the context
    reply = aios.chat("Which hotel is Ada staying at?", retrieve_k=1, max_new_tokens=32)
    print("answer:", reply.text.strip())
