"""Answer normalisation for curation's answer agreement: decimals and capital initials."""

from __future__ import annotations

import pytest

from sicog.data.answers import normalize_answer, parse_answer


@pytest.mark.parametrize("written, same_as", [
    ("3.50", "3.5"), ("3.0", "3"), ("10.500 kg", "10.5 kg"), ("1,000.50", "1000.5"), ("0.0", "0"),
    ("U.S.A.", "USA"), ("U.S.A", "usa"), ("Washington D.C.", "Washington DC"), ("\u22123", "-3"),
])
def test_equal_answers_written_differently_agree(written: str, same_as: str) -> None:
    assert normalize_answer(written) == normalize_answer(same_as)


@pytest.mark.parametrize("one, other", [("1.05", "1.5"), ("3.5", "35"), ("U.S.A.", "U.S."), ("10", "1"),
                                          ("\u22123", "3")])
def test_different_answers_stay_apart(one: str, other: str) -> None:
    assert normalize_answer(one) != normalize_answer(other)


def test_the_answer_of_a_reply_is_normalised_the_same_way() -> None:
    assert parse_answer("Step 4: ...\nThe answer is 3.50.").normalized == "3.5"
    assert parse_answer("The answer is U.S.A. It is large.").normalized == "usa"
    # Lower-case abbreviations keep the usual rules (an "a" alone may be an article).
    assert normalize_answer("e.g. 3") == "e g 3" and normalize_answer("B.") == "b"
