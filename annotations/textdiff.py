"""How far a reviewer's text is from the draft: edit distances and a word-level diff.

No Django here: plain functions on strings.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

# Beyond this many characters the character distance is estimated, not computed exactly:
# the work of the exact one grows with the product of the lengths.
EXACT_LIMIT = 20_000

_WORD = re.compile(r"\S+")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def levenshtein(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Levenshtein distance between two sequences (characters or words).

    Myers' bit-parallel algorithm (J. ACM 1999, in Hyyrö's formulation): one column of the
    table is an integer's bits, so the work is len(b) big-integer steps, not len(a) * len(b)
    Python steps.
    """
    start = 0
    while start < len(a) and start < len(b) and a[start] == b[start]:
        start += 1
    a, b = a[start:], b[start:]
    end = 0
    while end < len(a) and end < len(b) and a[-1 - end] == b[-1 - end]:
        end += 1
    if end:
        a, b = a[:-end], b[:-end]
    if not a or not b:
        return len(a) + len(b)
    if len(a) < len(b):
        a, b = b, a
    m = len(a)
    full, top = (1 << m) - 1, 1 << (m - 1)
    peq: dict[Hashable, int] = {}
    for i, token in enumerate(a):
        peq[token] = peq.get(token, 0) | (1 << i)
    pv, mv, score = full, 0, m
    for token in b:
        eq = peq.get(token, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = (mv | ~(xh | pv)) & full
        mh = pv & xh
        if ph & top:
            score += 1
        elif mh & top:
            score -= 1
        ph = ((ph << 1) | 1) & full
        mh = (mh << 1) & full
        pv = (mh | ~(xv | ph)) & full
        mv = ph & xv
    return score


def char_distance(a: str, b: str) -> int:
    """Characters inserted, deleted or changed to turn `a` into `b`.

    Texts longer than EXACT_LIMIT get an estimate: difflib matches their words, and each
    changed run of words counts its own distance (or its length, if it is itself too long).
    """
    if max(len(a), len(b)) <= EXACT_LIMIT:
        return levenshtein(a, b)
    old, new = words(a), words(b)
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    total = 0
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op != "equal":
            removed, added = " ".join(old[i1:i2]), " ".join(new[j1:j2])
            longest = max(len(removed), len(added))
            total += levenshtein(removed, added) if longest <= EXACT_LIMIT else longest
    return total


def word_distance(a: str, b: str) -> int:
    """Words inserted, deleted or changed to turn `a` into `b`."""
    return levenshtein(words(a), words(b))


@dataclass(frozen=True)
class Piece:
    """A run of words of the diff: "same", "added" or "removed"."""

    kind: str
    text: str


def word_diff(a: str, b: str) -> list[Piece]:
    """The words of `a` and `b` in order, each run marked as kept, added or removed."""
    old, new = words(a), words(b)
    pieces: list[Piece] = []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            pieces.append(Piece("same", " ".join(old[i1:i2])))
            continue
        if op in ("delete", "replace"):
            pieces.append(Piece("removed", " ".join(old[i1:i2])))
        if op in ("insert", "replace"):
            pieces.append(Piece("added", " ".join(new[j1:j2])))
    return pieces
