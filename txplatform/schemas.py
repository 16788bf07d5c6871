# -*- test-case-name: tests.gateway.test_openapi -*-
"""
JSON Schemas of what HTTP operations answer (L{txplatform.routes.Operation}
C{response}): the pieces most answers are made of.  Requests need none:
their schemas come from their message classes.
"""

from __future__ import annotations

from typing import Any

from .messages import RECORD_ID

__all__ = ["TIMESTAMP", "RECORD_ID_SCHEMA", "objectSchema", "pageOf"]

#: A time as the services give it.
TIMESTAMP = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC."}

#: A record id (L{txplatform.recordid}).
RECORD_ID_SCHEMA = {"type": "string", "pattern": f"^{RECORD_ID}$"}


def objectSchema(properties: dict[str, Any]) -> dict[str, Any]:
    """
    An object with exactly these properties, all present.
    """
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "required": list(properties),
    }


def pageOf(item: dict[str, Any]) -> dict[str, Any]:
    """
    A page of a listing: C{{"items": [...], "next": cursor-or-null}}.
    """
    return objectSchema(
        {
            "items": {"type": "array", "items": item},
            "next": {
                "type": ["string", "null"],
                "description": "Cursor of the next page; null on the last one.",
            },
        }
    )
