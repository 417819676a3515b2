"""The sched-agent (SchedCP on aios): a package, one concept per module.

* ``goals`` — the goal vocabulary (one table) and how a goal is measured;
* ``goal_inference`` — the user's words -> a goal, with worked examples retrieved from storage
  (the examples ship as data: ``aios/agents/data/sched_goal_examples.json``);
* ``task`` / ``report`` — the agent's edges (what it is asked, what it answers);
* ``source`` — BPF C as text (the code in a model's answer, tunables);
* ``stats`` — when a measured gain counts (a confidence bound);
* ``state`` — one run's working state;
* ``agent`` — ``SchedAgent``, the loop itself;
* ``cli`` — ``aios sched optimize`` (wired by the top-level CLI, so the toolchain never imports
  the agent).
"""

from aios.agents.sched_agent.agent import SchedAgent
from aios.agents.sched_agent.goal_inference import (
    GOAL_EXAMPLE_PREFIX,
    GOAL_EXAMPLES,
    GOAL_INSTRUCTION,
    goal_examples,
    goal_messages,
    infer_goal,
    remember_goal_example,
)
from aios.agents.sched_agent.goals import (
    GOAL_LABELS,
    GOAL_PHRASE,
    GOAL_TABLE,
    GOALS,
    Goal,
    explicit_goal,
    goal_metric,
)
from aios.agents.sched_agent.report import Cost, IterationRecord, OptimizeReport, Verdict
from aios.agents.sched_agent.source import extract_code, set_tunables, source_tunables
from aios.agents.sched_agent.stats import confident_gain
from aios.agents.sched_agent.task import Budget, OptimizeTask

__all__ = [
    "GOALS",
    "GOAL_EXAMPLES",
    "GOAL_EXAMPLE_PREFIX",
    "GOAL_INSTRUCTION",
    "GOAL_LABELS",
    "GOAL_PHRASE",
    "GOAL_TABLE",
    "Budget",
    "Cost",
    "Goal",
    "IterationRecord",
    "OptimizeReport",
    "OptimizeTask",
    "SchedAgent",
    "Verdict",
    "confident_gain",
    "explicit_goal",
    "extract_code",
    "goal_examples",
    "goal_messages",
    "goal_metric",
    "infer_goal",
    "remember_goal_example",
    "set_tunables",
    "source_tunables",
]
