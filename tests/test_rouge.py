"""ROUGE-L: the bit-parallel LCS against the plain table, and small cases by hand."""

import random

import pytest

from annotations.rouge import lcs_length, rouge_l, tokens


def _lcs_table(a, b) -> int:
    """The textbook O(n*m) dynamic programme."""
    row = [0] * (len(b) + 1)
    for x in a:
        previous_diagonal = 0
        for j, y in enumerate(b, 1):
            above = row[j]
            row[j] = previous_diagonal + 1 if x == y else max(row[j], row[j - 1])
            previous_diagonal = above
    return row[-1]


def test_it_matches_the_table_on_random_texts():
    rng = random.Random(20261130)
    for _ in range(300):
        vocabulary = [f"w{i}" for i in range(rng.randint(1, 12))]
        a = [rng.choice(vocabulary) for _ in range(rng.randint(0, 90))]
        b = [rng.choice(vocabulary) for _ in range(rng.randint(0, 90))]
        assert lcs_length(a, b) == _lcs_table(a, b)
        assert lcs_length(b, a) == _lcs_table(a, b)


def test_it_matches_the_table_beyond_one_machine_word():
    rng = random.Random(7)
    a = [rng.choice("abcdef") for _ in range(700)]
    b = [rng.choice("abcdef") for _ in range(650)]
    assert lcs_length(a, b) == _lcs_table(a, b)


def test_it_tokenises_as_rouge_score_does():
    assert tokens("Invasive ductal-carcinoma, grade 2/3.") == [
        "invasive",
        "ductal",
        "carcinoma",
        "grade",
        "2",
        "3",
    ]
    assert tokens("Ümlaut — ...") == ["mlaut"]


@pytest.mark.parametrize(
    ("candidate", "reference", "expected"),
    [
        ("the cat sat", "the cat sat", 1.0),
        ("", "the cat", 0.0),
        ("dog", "the cat", 0.0),
        # LCS "the cat" (2): precision 2/3, recall 2/2, F = 0.8.
        ("the big cat", "the cat", 0.8),
        # Lin's example: LCS "police the gunman" (3 of 4 each side): F = 0.75.
        ("police kill the gunman", "police killed the gunman", 0.75),
        # Order matters: LCS of "a b c d" and "d c b a" is 1: F = 1/4.
        ("a b c d", "d c b a", 0.25),
        # Case and punctuation are not words.
        ("The CAT, sat.", "the cat sat", 1.0),
    ],
)
def test_it_gives_hand_computed_scores(candidate, reference, expected):
    assert rouge_l(candidate, reference) == pytest.approx(expected)
