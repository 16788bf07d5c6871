# -*- test-case-name: tests.services.test_mentions -*-
"""
Finding @mentions in a post.
"""

from __future__ import annotations

import re

__all__ = ["mentionedUsernames"]

# A mention is '@' and a run of username characters, matched without
# regard to case; the run ends at the first character outside them.
_MENTION = re.compile(r"@([A-Za-z0-9_]+)")


def mentionedUsernames(body: str) -> list[str]:
    """
    The distinct usernames C{body} mentions, lowercased, in order of first
    mention.  A run too short or too long to be a username mentions no one.
    """
    seen: dict[str, None] = {}
    for match in _MENTION.finditer(body):
        name = match.group(1).lower()
        if 3 <= len(name) <= 32:
            seen.setdefault(name)
    return list(seen)
