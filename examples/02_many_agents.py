"""Many agents at once: four agents share one kernel; their LLM calls are batched together.

The scheduler decides who holds the batch's rows; round robin with a 4-token quantum suspends
and resumes requests (exactly: same output as running alone).

    python examples/02_many_agents.py [MODEL]
"""

import sys

import aios
from aios.agents import MathAgent, NarrativeAgent, RecommendationAgent, TravelAgent

model = sys.argv[1] if len(sys.argv) > 1 else "smollm2"

with aios.Kernel(model=model, scheduler="rr", quantum=4, max_batch_size=4) as kernel:
    _ = kernel.llm  # load the model now, not at the first LLM call, so the timings are the agents'
    runs = aios.run_all(
        kernel,
        [
            (MathAgent(), "Tickets cost 8 dollars. How much do 7 tickets cost?"),
            (NarrativeAgent(), "a robot that learns to paint"),
            (RecommendationAgent(), "cheap noodles near the university"),
            (TravelAgent(), "Plan a 2-day trip from New York to Chicago."),
        ],
    )

print(f"{'agent':<16}{'ok':<4}{'waiting (s)':>12}{'turnaround (s)':>16}  summary")
for r in runs:
    summary = (r.output or {}).get("summary", r.error) if r.ok else r.error.splitlines()[0]
    print(
        f"{r.agent:<16}{'yes' if r.ok else 'NO':<4}{r.waiting_time:>12.2f}{r.turnaround_time:>16.2f}  {summary}"
    )
