"""When a measured gain counts: a confidence bound on a candidate's ratios against EEVDF.

Why a bound and not the mean: under TCG one program's ratio moves by tens of percent between
boots, and the loop's best is the maximum of many noisy ratios. A winner is accepted only if its
gain clears ``min_gain`` at a one-sided 90% lower bound, so noisy repetitions must agree first.
"""

from __future__ import annotations

import math

from aios.agents.sched_agent.report import IterationRecord

#: One-sided 90% Student t quantiles by degrees of freedom (the last one for every larger count).
_T90 = (3.078, 1.886, 1.638, 1.533, 1.476, 1.440, 1.415, 1.397, 1.383, 1.372)


def confident_gain(rec: IterationRecord) -> float:
    """A one-sided 90% lower bound of ``rec``'s gain over EEVDF, from its per-repetition ratios.

    Ratios are compared on a log scale (a 2x win and a 2x loss cancel out), and the bound is the
    Student t bound on their mean, so three noisy repetitions must agree more than seven do. With
    one repetition there is no spread to go by: the measured gain itself.
    """
    r = [x for x in rec.ratios if x > 0]
    if len(r) < 2:
        return rec.improvement if rec.improvement is not None else float("-inf")
    logs = [math.log(x) for x in r]
    mean = sum(logs) / len(logs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1))
    t = _T90[min(len(logs) - 2, len(_T90) - 1)]
    return math.exp(mean - t * sd / math.sqrt(len(logs))) - 1.0
