"""
What the gateway itself answers: its health check and problem details.
The services' operations declare their own schemas beside their routes.
"""

from __future__ import annotations

from txplatform.schemas import objectSchema

HEALTH = objectSchema({"status": {"type": "string", "enum": ["ok"]}})

PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "request_id": {"type": "string"},
        "retry_after": {
            "type": "integer",
            "description": "With 429: seconds to wait, as in the Retry-After header.",
        },
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "reason"],
                "properties": {"field": {"type": "string"}, "reason": {"type": "string"}},
            },
        },
    },
}
