"""Example agents. ``AGENTS`` maps the name used on the command line to the class.

Each agent sends 2-3 LLM requests per run (like the AIOS paper's agents) and parses model output
robustly, so it runs on SmolLM2 and on a random-weight test model alike.
"""

from aios.agents.base import ExampleAgent
from aios.agents.chat import ChatAgent
from aios.agents.math_agent import MathAgent
from aios.agents.narrative import NarrativeAgent
from aios.agents.recommendation import RecommendationAgent
from aios.agents.travel import TravelAgent

AGENTS: dict[str, type[ExampleAgent]] = {
    "math": MathAgent,
    "narrative": NarrativeAgent,
    "recommendation": RecommendationAgent,
    "travel": TravelAgent,
    "chat": ChatAgent,
}

# The three agents of the AIOS paper's evaluation (consistency, waiting and turnaround).
PAPER_AGENTS = ("math", "narrative", "recommendation")

__all__ = [
    "AGENTS",
    "PAPER_AGENTS",
    "ChatAgent",
    "ExampleAgent",
    "MathAgent",
    "NarrativeAgent",
    "RecommendationAgent",
    "TravelAgent",
]
