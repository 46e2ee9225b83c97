"""Agreement between readers: percent agreement, Cohen's and Fleiss' kappa.

No Django here: plain functions on the decisions of each task.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
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


# Kept counts: agreement over a project without reading its labels ----------------------
#
# A project's agreement is a sum over its tasks, so each task's part (`task_cells`) is
# added when its readings change, minus what it added before; `summary` computes the
# figures from the sums. Cells: "tasks" (read twice or more), "pairs" and "agreeing"
# (pairs of readers), "c:<first>:<second>" (the first two readings, for Cohen's kappa),
# "f:n", "f:kk" and "f:<decision>" (tasks read `wanted` times, for Fleiss'), "w:sum" and
# "w:n" (word distances between kept texts).

REJECTED = "rejected"  # nothing kept: no text to measure


def task_cells(
    readings: Sequence[tuple[str, str]], *, wanted: int, distance: Callable[[str, str], int]
) -> Counter:
    """What one task adds to its project's cells; `readings`: (decision, text), oldest
    first; `distance`: the word distance between two texts."""
    cells: Counter = Counter()
    if len(readings) < 2:
        return cells
    decisions = [decision for decision, _ in readings]
    cells["tasks"] += 1
    for a, b in combinations(decisions, 2):
        cells["pairs"] += 1
        cells["agreeing"] += a == b
    cells[f"c:{decisions[0]}:{decisions[1]}"] += 1
    if len(readings) == wanted:
        counts = Counter(decisions)
        cells["f:n"] += 1
        cells["f:kk"] += sum(k * (k - 1) for k in counts.values())
        for decision, k in counts.items():
            cells[f"f:{decision}"] += k
    kept = [text for decision, text in readings if decision != REJECTED]
    for a, b in combinations(kept, 2):
        cells["w:sum"] += distance(a, b)
        cells["w:n"] += 1
    return cells


def cells_delta(before: Counter, after: Counter) -> dict[str, int]:
    delta = Counter(after)
    delta.subtract(before)
    return {key: n for key, n in delta.items() if n}


def summary(cells: Mapping[str, int], *, wanted: int) -> dict:
    """The project page's figures from its cells: what `percent_agreement`, `cohen_kappa`
    (two readings a task) or `fleiss_kappa` (more) give over its tasks' readings."""
    pairs = cells.get("pairs", 0)
    percent = cells.get("agreeing", 0) / pairs if pairs else None
    if wanted == 2:
        kappa = _cohen_from(
            {tuple(k.split(":")[1:]): n for k, n in cells.items() if k.startswith("c:") and n}
        )
    else:
        kappa = _fleiss_from(cells, m=wanted)
    words = cells.get("w:n", 0)
    return {
        "tasks": cells.get("tasks", 0),
        "percent": percent * 100 if percent is not None else None,
        "kappa": kappa,
        "kappa_name": "Cohen's kappa" if wanted == 2 else "Fleiss' kappa",
        "mean_words": cells.get("w:sum", 0) / words if words else None,
    }


def _cohen_from(table: Mapping[tuple[str, ...], int]) -> float | None:
    n = sum(table.values())
    if not n:
        return None
    observed = sum(k for (a, b), k in table.items() if a == b) / n
    first: Counter = Counter()
    second: Counter = Counter()
    for (a, b), k in table.items():
        first[a] += k
        second[b] += k
    expected = sum(first[c] * second[c] for c in first) / (n * n)
    if expected == 1:
        return 1.0
    return (observed - expected) / (1 - expected)


def _fleiss_from(cells: Mapping[str, int], *, m: int) -> float | None:
    n = cells.get("f:n", 0)
    if not n or m < 2:
        return None
    p_bar = cells.get("f:kk", 0) / (m * (m - 1)) / n
    totals = [k for key, k in cells.items() if key.startswith("f:") and key not in ("f:n", "f:kk")]
    p_e = sum((total / (n * m)) ** 2 for total in totals)
    if p_e == 1:
        return 1.0
    return (p_bar - p_e) / (1 - p_e)
