# -*- test-case-name: tests.test_topics -*-
"""
AMQP topic matching, for buses that route events themselves.

Event names and patterns are dot-separated words; in a pattern C{*} stands
for exactly one word and C{#} for zero or more, as on a RabbitMQ topic
exchange, so a subscription means the same on every bus.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["checkEventName", "checkPattern", "topicMatches"]

_WORD = re.compile(r"^[a-z0-9_-]+\Z")


def checkEventName(name: str) -> str:
    """
    @raise ValueError: C{name} is not dot-separated words.
    """
    if not isinstance(name, str) or not all(_WORD.match(w) for w in name.split(".")):
        raise ValueError(f"an event name is dot-separated words of a-z, 0-9, _ and -, not {name!r}")
    return name


def checkPattern(pattern: str) -> str:
    """
    @raise ValueError: C{pattern} is not a topic pattern.
    """
    if not isinstance(pattern, str) or not all(
        w in ("*", "#") or _WORD.match(w) for w in pattern.split(".")
    ):
        raise ValueError(f"not a topic pattern: {pattern!r}")
    return pattern


@lru_cache(maxsize=4096)
def topicMatches(pattern: str, name: str) -> bool:
    """
    Whether event C{name} matches topic C{pattern}.
    """
    return _match(tuple(pattern.split(".")), tuple(name.split(".")))


def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        # '#' swallows zero or more words: try every split.
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])
