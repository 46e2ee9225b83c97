"""ROUGE-L: how much of a reference text a candidate keeps, in order (Lin 2004).

The F-measure (beta 1) of the longest common subsequence of lower-cased word tokens (runs
of [a-z0-9], as the `rouge-score` package's rougeL tokenises without stemming). The
subsequence is found bit-parallel (Allison and Dix 1986, Hyyrö 2004): one text's positions
are an integer's bits, so the work is one big-integer step per token of the other, and
500-word texts cost well under a millisecond.

No Django here: plain functions on strings.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence

_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    """The words ROUGE compares: runs of [a-z0-9] of the lower-cased text."""
    return _TOKEN.findall(text.lower())


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """The length of the longest common subsequence of `a` and `b`.

    `v` has a zero bit at each position of `a` where the subsequence found so far grows:
    for each token of `b`, the matches not yet used carry into the next free position."""
    if not a or not b:
        return 0
    n = len(a)
    masks: dict[Hashable, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << n) - 1
    v = full
    for token in b:
        mask = masks.get(token)
        if mask:
            u = v & mask
            v = ((v + u) | (v - u)) & full
    return n - v.bit_count()


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F-measure of `candidate` against `reference`, from 0 to 1 (0 when either has
    no word)."""
    cand, ref = tokens(candidate), tokens(reference)
    if not cand or not ref:
        return 0.0
    common = lcs_length(ref, cand)
    if not common:
        return 0.0
    precision, recall = common / len(cand), common / len(ref)
    return 2 * precision * recall / (precision + recall)
