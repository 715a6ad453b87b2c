"""The searches of automatic mixed precision: the greedy Pareto list (phase 2) and the choice on it (phase 3).

Phase 2 (AIMET's greedy Pareto): start with every group at its highest candidate and repeatedly move the one
group whose move to a cheaper candidate loses the least estimated score per unit of cost saved. The estimated
score of a configuration is the score at the highest candidates minus the sum of the phase-1 drops of its
groups (each measured with only that group lowered). Every step is a point of the list: cost strictly falls.

Phase 3: the estimate ignores how errors add up, so points are verified with real evaluations. ``front_evals``
evenly spaced points are scored (the curve drawn in the report); between the cheapest passing one and the next
failing one a binary search (AIMET's, which assumes the score falls along the list) finds the cheapest point
that meets the target. Only points scored by a real evaluation can be chosen. With a budget (``max_cost``) the
search runs on the part of the list within it (:func:`first_within`).

Example:
    >>> groups = {"a": {"hi": 0.0, "lo": 0.1}, "b": {"hi": 0.0, "lo": 0.5}}
    >>> costs = {"a": {"hi": 2.0, "lo": 1.0}, "b": {"hi": 2.0, "lo": 1.0}}
    >>> [step for step, _ in greedy_steps(groups, costs, ["hi", "lo"])]
    [('a', 'lo'), ('b', 'lo')]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from ..errors import InvalidOptionError

if TYPE_CHECKING:
    from .amp_groups import Candidate, CostKind, LayerGroup
    from .amp_result import ParetoPoint

__all__ = ["greedy_steps", "search_front", "check_budget", "first_within"]


def greedy_steps(
    drops: Mapping[str, Mapping[str, float]], costs: Mapping[str, Mapping[str, float]], candidates: Sequence[str]
) -> list[tuple[tuple[str, str], float]]:
    """The greedy moves from all-highest (``candidates[0]``): ``[((group, candidate), estimated drop)...]``.

    ``drops[group][candidate]``: phase-1 score drop with only that group at that candidate (0 at the highest);
    ``costs[group][candidate]``: its cost. A move goes to any candidate cheaper than the group's current one,
    the one with the least extra drop per cost saved (ties: the larger saving, then the earlier group).

    Example:
        >>> greedy_steps({"a": {"W8": 0.0, "W4": 0.2}}, {"a": {"W8": 8.0, "W4": 4.0}}, ["W8", "W4"])
        [(('a', 'W4'), 0.2)]
    """
    current = dict.fromkeys(drops, candidates[0])
    total = 0.0
    steps: list[tuple[tuple[str, str], float]] = []
    while True:
        best: tuple[float, float, int, str, str] | None = None
        for index, group in enumerate(drops):
            here = current[group]
            for cand in candidates:
                saved = costs[group][here] - costs[group][cand]
                if saved <= 0:
                    continue
                extra = drops[group][cand] - drops[group][here]
                key = (extra / saved, -saved, index, group, cand)
                if best is None or key < best:
                    best = key
        if best is None:
            return steps
        _, _, _, group, cand = best
        total += drops[group][cand] - drops[group][current[group]]
        current[group] = cand
        steps.append(((group, cand), total))


def search_front(count: int, score_at: Callable[[int], float], target: float, front_evals: int) -> tuple[int, bool]:
    """The index of the cheapest verified point of a list of ``count`` points (0: most expensive) whose real
    score ``score_at(i)`` is ≥ ``target``, and whether any point met it (if not: index 0).

    ``score_at`` is called for point 0, about ``front_evals`` evenly spaced points, then a binary search.

    Example:
        >>> scores = [1.0, 0.99, 0.98, 0.97, 0.9, 0.8]
        >>> search_front(len(scores), scores.__getitem__, 0.975, front_evals=2)
        (2, True)
    """
    if score_at(0) < target:
        return 0, False
    spaced = sorted({round(i * (count - 1) / max(front_evals, 1)) for i in range(front_evals + 1)})
    passing = [i for i in spaced if score_at(i) >= target]
    low = max(passing) if passing else 0
    failing = [i for i in spaced if i > low]
    high = min(failing) if failing else low
    while high - low > 1:  # low passes, high fails
        mid = (low + high) // 2
        if score_at(mid) >= target:
            low = mid
        else:
            high = mid
    return low, True


def check_budget(
    groups: Sequence[LayerGroup], candidates: Sequence[Candidate], kind: CostKind, max_cost: float
) -> None:
    """Refuse a budget that not even every group at its cheapest candidate meets (before any long work).

    Example:
        >>> from leantorch.ptq.amp_groups import Candidate, LayerGroup
        >>> check_budget([LayerGroup("fc", macs=1, params=64)], [Candidate(8, 8), Candidate(4, 8)], "memory", 0.4)
        Traceback (most recent call last):
        ...
        leantorch.errors.InvalidOptionError: max_cost=0.4 is below what every group at its cheapest candidate costs \
(0.5 of the all-highest point's memory): raise max_cost or add a cheaper candidate
    """
    highest = sum(g.cost(candidates[0], kind) for g in groups)
    lowest = sum(min(g.cost(c, kind) for c in candidates) for g in groups)
    if highest > 0 and lowest > max_cost * highest:
        raise InvalidOptionError(
            f"max_cost={max_cost:g} is below what every group at its cheapest candidate costs "
            f"({lowest / highest:.3g} of the all-highest point's {kind}): raise max_cost or add a cheaper candidate"
        )


def first_within(front: Sequence[ParetoPoint], max_cost: float | None) -> int:
    """Index of the first point of the greedy list whose cost is at most ``max_cost`` × the first point's (0 without
    a budget). Costs fall along the list, so every later point is within the budget too.

    Example:
        >>> from leantorch.ptq.amp_result import ParetoPoint
        >>> front = [ParetoPoint(cost, cost, 0.0, {}) for cost in (8.0, 6.0, 4.0, 3.0)]
        >>> first_within(front, 0.5), first_within(front, None)
        (2, 0)
    """
    if max_cost is None:
        return 0
    limit = max_cost * front[0].cost
    return next((i for i, point in enumerate(front) if point.cost <= limit), len(front) - 1)
