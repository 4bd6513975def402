"""Counting things in plain English: "1 facility", "2 facilities", "1 round", "3 rounds"."""

from __future__ import annotations

PLURALS = {"facility": "facilities", "process": "processes"}
"""Words whose plural is not the word plus "s" (the last word of a phrase is the one made plural)."""


def counted(n: int, word: str) -> str:
    """``n`` and ``word`` (or a phrase, whose last word takes the plural), e.g. counted(2, "facility")."""
    if n == 1:
        return f"{n} {word}"
    head, _, last = word.rpartition(" ")
    plural = PLURALS.get(last, last + "s")
    return f"{n} {head + ' ' if head else ''}{plural}"
