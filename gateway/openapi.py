# -*- test-case-name: tests.gateway.test_openapi -*-
"""
The OpenAPI 3.1 document, built from the gateway's routes as they are.

Every route of the Klein app carries its L{Operation}; the document lists
exactly those routes, with the schemas of the message classes the gateway
checks bodies and queries against, so the document cannot describe an API
the code does not serve.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

import txplatform
from txplatform.messages import fieldSchemas, jsonSchema

from . import schemas
from .operations import operationOf

__all__ = ["openapiDocument", "openapiPath"]

# Every operation may answer these.
_COMMON_ERRORS = {
    500: "An internal error; the detail names the request id.",
    503: "A service did not answer in time.",
}
_AUTH_ERRORS = {401: "No token, or an invalid, expired or revoked one."}
_BODY_ERRORS = {
    400: "Malformed JSON or invalid fields (`errors` says which and why).",
    413: "The body is over the size limit.",
    415: "The body is not `application/json`.",
}
_QUERY_ERROR = "Invalid query parameters (`errors` says which and why)."
_DESCRIPTIONS = {
    400: "Invalid request.",
    401: "Authentication failed.",
    403: "Not yours, or a wrong password.",
    404: "Not found.",
    409: "Conflicts with an existing account (username or email taken).",
    429: "Too many requests (from this address where the gateway limits them, failed"
    " logins, posts): try again after `Retry-After` seconds.",
}


def openapiPath(rule: str) -> str:
    """
    A werkzeug rule (C{/v1/posts/<post_id>}) as an OpenAPI path
    (C{/v1/posts/{post_id}}).
    """
    return re.sub(r"<(?:[a-z_]+:)?([a-z_]+)>", r"{\1}", rule)


def _pathSchema(rule: str, name: str) -> dict[str, Any]:
    try:
        return schemas.PATH_PARAMETERS[name]
    except KeyError:
        raise ValueError(
            f"route {rule}: path parameter {name!r} has no schema in gateway.schemas"
        ) from None


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


def openapiDocument(gateway: Any) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for rule in gateway.app.url_map.iter_rules():
        op = operationOf(gateway.app.endpoints[rule.endpoint])
        if op is None:
            raise ValueError(f"route {rule.rule} is not declared with @operation")
        path = openapiPath(rule.rule)
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": _pathSchema(rule.rule, name)}
            for name in re.findall(r"\{([a-z_]+)\}", path)
        ]
        if op.query is not None:
            parameters += [
                {"name": name, "in": "query", "required": required, "schema": schema}
                for name, schema, required in fieldSchemas(op.query)
            ]
        responses: dict[str, Any] = {}
        success: dict[str, Any] = {"description": HTTPStatus(op.status).phrase}
        if op.streaming:
            success["content"] = {
                "text/event-stream": {
                    "schema": {"type": "string"},
                    "x-event-schema": op.response,
                }
            }
        elif op.response is not None:
            success["content"] = {"application/json": {"schema": op.response}}
        responses[str(op.status)] = success
        errors = {
            status: _DESCRIPTIONS.get(status, HTTPStatus(status).phrase) for status in op.errors
        }
        if op.body is not None:
            errors.update(_BODY_ERRORS)
        elif op.query is not None:
            errors[400] = _QUERY_ERROR
        if op.rules:
            # Refused although the schemas allow it: said in words, and in
            # x-rules for tools (the fields the problem's errors name).
            beyond = "; ".join(f"`{name}` {why}" for name, why in op.rules)
            errors[400] = (
                f"{errors.get(400, _DESCRIPTIONS[400])} Beyond the schemas, also when {beyond}."
            )
        if op.auth:
            errors.update(_AUTH_ERRORS)
        errors.update(_COMMON_ERRORS)
        limited = getattr(gateway, "rateLimit", None) is not None or (
            op.auth and getattr(gateway, "accountRateLimit", None) is not None
        )
        if op.rateLimited and limited:
            errors[429] = _DESCRIPTIONS[429]
        for status in sorted(errors):
            responses[str(status)] = _problem(errors[status])
        if op.rules:
            responses["400"]["x-rules"] = dict(op.rules)
        entry: dict[str, Any] = {
            "operationId": rule.endpoint,
            "summary": op.summary,
            "tags": [op.tag],
            "responses": responses,
            "x-priority": op.priority.name.lower(),
        }
        if op.description:
            entry["description"] = op.description
        if parameters:
            entry["parameters"] = parameters
        if op.body is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": jsonSchema(op.body)}},
            }
        if op.auth:
            entry["security"] = [{"bearer": []}]
            if op.ticket:
                entry["security"].append({"streamTicket": []})
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "txplatform",
            "version": txplatform.__version__,
            "description": "Accounts, posts and notifications.  Errors are RFC 9457"
            " problem details; pages take `limit` (1-100, default 20) and an opaque"
            " `cursor`, and give `next` (null on the last page).",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": {"Problem": schemas.PROBLEM},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "streamTicket": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "ticket",
                    "description": "Single use, for a minute: from"
                    " POST /v1/notifications/stream/tickets.",
                },
            },
        },
    }
