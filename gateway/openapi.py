# -*- test-case-name: tests.gateway.test_openapi -*-
"""
The OpenAPI 3.1 document, built from the gateway's routes as they are.

The document lists exactly the routes the gateway serves, each as its
L{txplatform.routes.Operation} declares it, with the schemas of the message classes the gateway
checks bodies and queries against, so the document cannot describe an API
the code does not serve.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from txplatform.messages import fieldSchemas, jsonSchema

from . import schemas

__all__ = ["openapiDocument"]

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
_IDEMPOTENCY_ERROR = (
    "This `Idempotency-Key` was used before, by this client on this operation, with another body."
)
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Makes retrying safe: a request sent again with the same key and body (by"
    " the same client, to the same operation) gets the first one's answer for a day rather"
    " than doing the work twice; the same key with another body gets 422. Use a new random"
    " key (a UUID) per request, and the same one for its retries.",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 257,
        "pattern": '^(?:"[ !#-~]{1,255}"|[!#-~]{1,255})$',
    },
}
_QUERY_ERROR = "Invalid query parameters (`errors` says which and why)."
_DESCRIPTIONS = {
    400: "Invalid request.",
    401: "Authentication failed.",
    403: "Not yours, or a wrong password.",
    404: "Not found.",
    409: "Conflicts with what exists.",
    429: "Too many requests (from this address where the gateway limits them, failed"
    " logins, posts): try again after `Retry-After` seconds.",
}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


def openapiDocument(gateway: Any) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for one in gateway.routes:
        op = one.operation
        parameters = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": op.parameters.get(name, {"type": "string"}),
            }
            for name in one.variables
        ]
        if op.query is not None:
            parameters += [
                {"name": name, "in": "query", "required": required, "schema": schema}
                for name, schema, required in fieldSchemas(op.query)
            ]
        if one.method in ("POST", "PATCH"):
            parameters.append(_IDEMPOTENCY_KEY)
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
        # What the gateway answers for every operation of this kind, then
        # what this one says of its own answers (both, for one status).
        errors: dict[int, str] = {}
        if op.body is not None:
            errors.update(_BODY_ERRORS)
        elif op.query is not None:
            errors[400] = _QUERY_ERROR
        if op.auth:
            errors.update(_AUTH_ERRORS)
        if one.method in ("POST", "PATCH"):
            errors[422] = _IDEMPOTENCY_ERROR
        errors.update(_COMMON_ERRORS)
        limited = getattr(gateway, "rateLimit", None) is not None or (
            op.auth and getattr(gateway, "accountRateLimit", None) is not None
        )
        if op.rateLimited and limited:
            errors[429] = _DESCRIPTIONS[429]
        for status, said in op.errors.items():
            if status in errors and said:
                errors[status] = f"{errors[status]} {said}"
            elif said or status not in errors:
                errors[status] = said or _DESCRIPTIONS.get(status, HTTPStatus(status).phrase)
        if op.rules:
            # Refused although the schemas allow it: said in words, and in
            # x-rules for tools (the fields the problem's errors name).
            beyond = "; ".join(f"`{name}` {why}" for name, why in op.rules.items())
            errors[400] = (
                f"{errors.get(400, _DESCRIPTIONS[400])} Beyond the schemas, also when {beyond}."
            )
        for status in sorted(errors):
            responses[str(status)] = _problem(errors[status])
        if op.rules:
            responses["400"]["x-rules"] = dict(op.rules)
        entry: dict[str, Any] = {
            "operationId": one.name,
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
        paths.setdefault(one.path, {})[one.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": dict(gateway.info),
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
