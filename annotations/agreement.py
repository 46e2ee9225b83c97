"""Agreement between readers: percent agreement, Cohen's and Fleiss' kappa.

No Django here: plain functions on the decisions of each task.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from itertools import combinations


def percent_agreement(ratings: Sequence[Sequence[Hashable]]) -> float | None:
    """The share of agreeing pairs of readers, over all tasks (each task: its readers'
    decisions). For two readers, the share of tasks they agree on. None without pairs."""
    pairs = agreeing = 0
    for decisions in ratings:
        for a, b in combinations(decisions, 2):
            pairs += 1
            agreeing += a == b
    return agreeing / pairs if pairs else None


def cohen_kappa(pairs: Sequence[tuple[Hashable, Hashable]]) -> float | None:
    """Cohen's kappa of two readers (first and second reading of each task). None without
    tasks; 1.0 when both readers always gave one same category (no chance to measure)."""
    n = len(pairs)
    if not n:
        return None
    observed = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[c] * second[c] for c in first) / (n * n)
    if expected == 1:
        return 1.0
    return (observed - expected) / (1 - expected)


def fleiss_kappa(ratings: Sequence[Sequence[Hashable]]) -> float | None:
    """Fleiss' kappa for tasks read by the same number (2 or more) of readers each; tasks
    with another number of readings than the first task are left out. None without tasks."""
    if not ratings:
        return None
    m = len(ratings[0])
    rows = [Counter(decisions) for decisions in ratings if len(decisions) == m]
    if m < 2:
        return None
    n = len(rows)
    totals: Counter = Counter()
    for row in rows:
        totals.update(row)
    p_bar = sum(sum(k * (k - 1) for k in row.values()) / (m * (m - 1)) for row in rows) / n
    p_e = sum((total / (n * m)) ** 2 for total in totals.values())
    if p_e == 1:
        return 1.0
    return (p_bar - p_e) / (1 - p_e)
