"""Checks on a query's text before any model sees it.

A rejected query raises :class:`QueryRejected` with a status name that matches
the constants of ``LocalizationResult.msg`` (EMPTY_QUERY, NOT_TEXT,
QUERY_TOO_LONG) and a one-line reason. What the text says is read by the
language front end (:mod:`.language`), which also limits clauses and hints.
"""
from __future__ import annotations

import unicodedata

from ..errors import SpatialocError

DEFAULT_MAX_CHARS = 2000  # a long spoken description is a few hundred characters
DEFAULT_MAX_HINTS = 12


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
