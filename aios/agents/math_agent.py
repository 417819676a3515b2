"""Math agent: turns a word problem into an expression, lets the calculator tool evaluate it, explains.

Two LLM requests: (1) write the expression, (2) explain the result step by step. The arithmetic
is the calculator's (the tool manager's ``calculator`` when the kernel has one), never the
model's, which is why small models still get the number right when they get the expression right.
"""

from __future__ import annotations

from typing import Any

from aios.agents._common import Services, extract_expression, first_line
from aios.agents.base import ExampleAgent

SYSTEM = "You are a careful math tutor. Be brief."


class MathAgent(ExampleAgent):
    description = "solves arithmetic word problems step by step; the calculator tool does the arithmetic"
    default_task = (
        "A shop sells pens for 3 dollars each. Anna buys 12 pens and pays with a 50 dollar note. "
        "How much change does she get?"
    )

    def run(self, task: Any = None) -> dict[str, Any]:
        problem = self.task_or_default(task)
        svc = Services()
        plan = self.ask(
            "You turn word problems into one arithmetic expression.",
            f"Problem: {problem}",
            tokens=24,
            shots=(
                (
                    "Problem: Tom has 5 bags with 4 apples each and eats 3 apples. How many are left?",
                    "5 * 4 - 3",
                ),
            ),
        )
        expression = extract_expression(plan) or extract_expression(problem)
        value = svc.calculate(expression) if expression else None
        if value is None:
            fact = "The calculator could not evaluate an expression."
        else:
            fact = f"The calculator says {expression} = {value:g}."
        explanation = self.ask(
            SYSTEM,
            f"Problem: {problem}\n{fact}\nExplain the solution step by step in at most three short sentences.",
            tokens=64,
        )
        return {
            "expression": expression,
            "result": value,
            "explanation": explanation,
            "summary": f"{expression} = {value:g}" if value is not None else first_line(explanation),
            "calculator": svc.used.get("calculator"),
        }
