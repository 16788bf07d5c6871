"""
The Parser service's contract.
"""

from __future__ import annotations

from txplatform.messages import request, string
from txplatform.serviceid import ServiceId

SERVICE_NAME = "parser"
SERVICE_ID = ServiceId.fromHex("010004")

#: The largest body (in characters) a parser replica takes.
BODY_MAX = 8 * 1024 * 1024


@request(SERVICE_ID, "parse")
class ParseBody:
    """
    A request body as the client sent it (decoded from UTF-8, nothing else),
    and the gateway operation it was sent to.  The reply is
    C{{"message": {...}}}: the body's message, checked against the schema
    the OpenAPI document publishes for that operation.
    """

    operation: str = string(
        minLength=1,
        maxLength=64,
        pattern="[A-Za-z][A-Za-z0-9_]*",
        hint="an operationId",
        description="The OpenAPI operationId of the request.",
    )
    body: str = string(
        maxLength=BODY_MAX,
        controls=True,
        description="The body as the client sent it; errors in it are the client's.",
    )
