"""Suggestions for misspelled names, shared by every stage that checks a name."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


def did_you_mean(word: str, candidates: Sequence[str]) -> str:
    """A ' (did you mean X?)' suffix when a candidate is close, else ''."""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
