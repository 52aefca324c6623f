"""Checks on a query's text before any model sees it, and what the text mentions.

A rejected query raises :class:`QueryRejected` with a status name that matches
the constants of ``LocalizationResult.msg`` (EMPTY_QUERY, NOT_TEXT,
QUERY_TOO_LONG) and a one-line reason. :func:`recognised_hints` counts the
sentences that name something the map vocabulary knows (a class or a colour
name), so a description of nothing known can be flagged as low confidence.
"""
from __future__ import annotations

import re
import unicodedata
from typing import List

from ..data.constants import CLASS_NAMES, COLOR_NAMES
from ..errors import SpatialocError

DEFAULT_MAX_CHARS = 2000  # a long spoken description is a few hundred characters
DEFAULT_MAX_HINTS = 12

_VOCABULARY = sorted({name.lower() for name in list(CLASS_NAMES) + list(COLOR_NAMES)},
                     key=len, reverse=True)
_KNOWN = re.compile(r"\b(" + "|".join(re.escape(w) for w in _VOCABULARY) + r")\b")


class QueryRejected(SpatialocError):
    """A query that cannot be localized; ``status`` names the result status."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def check_text(text, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """The text, whitespace-trimmed, if it can be a description; else raise QueryRejected."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise QueryRejected("NOT_TEXT", "the query is not UTF-8 text") from None
    if not isinstance(text, str):
        raise QueryRejected("NOT_TEXT", f"the query is a {type(text).__name__}, not text")
    if len(text) > max_chars:
        raise QueryRejected("QUERY_TOO_LONG", f"the query has {len(text)} characters; at most "
                                              f"{max_chars} are accepted")
    stripped = text.strip()
    if not stripped:
        raise QueryRejected("EMPTY_QUERY", "the query is empty" if not text
                            else "the query is only whitespace")
    controls = sum(1 for c in stripped
                   if unicodedata.category(c) in ("Cc", "Cs", "Co", "Cn") and c not in "\t\n\r")
    letters = sum(1 for c in stripped if c.isalpha())
    if controls or letters == 0:
        raise QueryRejected("NOT_TEXT", "the query holds control or undecodable characters"
                            if controls else "the query has no letters")
    return stripped


def check_hints(hints: List[str], max_hints: int = DEFAULT_MAX_HINTS) -> List[str]:
    """The sentences of a query, if there are 1 to ``max_hints`` of them."""
    if not hints:
        raise QueryRejected("EMPTY_QUERY", "the query has no sentence")
    if len(hints) > max_hints:
        raise QueryRejected("QUERY_TOO_LONG", f"the query has {len(hints)} sentences; at most "
                                              f"{max_hints} are used")
    return hints


def recognised_hints(hints: List[str]) -> int:
    """How many sentences name a class or a colour of the map vocabulary."""
    return sum(1 for h in hints if _KNOWN.search(h.lower()))
