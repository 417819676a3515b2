"""One agent on the embedded model: the math agent solves a word problem with the calculator tool.

python examples/01_one_agent.py
python examples/01_one_agent.py "A train travels 60 km per hour for 3 hours. How far does it go?"
"""

import sys

import aios
from aios.agents import MathAgent

task = sys.argv[1] if len(sys.argv) > 1 else None
model = sys.argv[2] if len(sys.argv) > 2 else "smollm2"

with aios.Kernel(model=model) as kernel:  # the embedded SmolLM2 by default; a path or hub name works too
    _ = kernel.llm  # load the model now, not at the first LLM call, so the timings are the agents'
    run = MathAgent().start(kernel, task)
    if not run.ok:
        sys.exit(f"the agent failed: {run.error}")
    print("expression:", run.output["expression"], "=", run.output["result"])
    print("explanation:", run.output["explanation"])
    print(
        f"turnaround {run.turnaround_time:.1f}s, waiting {run.waiting_time:.2f}s, {len(run.syscalls)} syscalls"
    )
