"""Request errors → OpenAI's error JSON and HTTP status: the one table, beside gRPC's status codes.

The same RequestError classes the gRPC edge turns into status codes (link/errors.py) are keyed here by
their code name, so both APIs refuse the same request for the same reason.
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

from pydantic import ValidationError

from splitserve.common.errors import InvalidRequest, Overloaded, RequestError


class HttpStatus(NamedTuple):
    status: int
    type: str  # OpenAI's error "type"


# gRPC code name (RequestError.code_name) → HTTP status and OpenAI error type.
STATUS: dict[str, HttpStatus] = {
    "INVALID_ARGUMENT": HttpStatus(400, "invalid_request_error"),
    "UNAUTHENTICATED": HttpStatus(401, "authentication_error"),
    "PERMISSION_DENIED": HttpStatus(403, "permission_error"),
    "NOT_FOUND": HttpStatus(404, "not_found_error"),
    "RESOURCE_EXHAUSTED": HttpStatus(429, "rate_limit_error"),
    "CANCELLED": HttpStatus(499, "cancelled"),  # the client is gone; nobody reads it
    "UNAVAILABLE": HttpStatus(503, "service_unavailable"),
    "DEADLINE_EXCEEDED": HttpStatus(504, "timeout"),
}
INTERNAL = HttpStatus(500, "internal_error")


class InvalidField(InvalidRequest):
    """A bad or unsupported request field, named in the error's `param`."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def status_of(error: RequestError) -> HttpStatus:
    return STATUS.get(error.code_name, INTERNAL)


def error_body(error: RequestError) -> dict[str, Any]:
    """`{"error": {"message", "type", "param", "code"}}`; `code` is the status name gRPC callers see."""
    return {"error": {"message": error.message, "type": status_of(error).type,
                      "param": getattr(error, "param", None), "code": error.code_name.lower()}}


def error_json(error: RequestError) -> bytes:
    return json.dumps(error_body(error)).encode()


def error_headers(error: RequestError) -> dict[str, str]:
    """`Retry-After` (whole seconds, as HTTP has it) and `retry-after-ms` (which the OpenAI SDKs read first)."""
    if not isinstance(error, Overloaded):
        return {}
    ms = error.retry_after_ms
    return {"retry-after": str(max(1, math.ceil(ms / 1000))), "retry-after-ms": str(ms)}


def from_validation(error: ValidationError) -> InvalidField:
    """The first problem pydantic found, naming the field as a dotted path."""
    first = error.errors(include_url=False)[0]
    param = ".".join(str(part) for part in first["loc"]) or "body"
    if first["type"] == "extra_forbidden":
        return InvalidField(param, f"unknown or unsupported field {param!r}")
    return InvalidField(param, f"{param}: {first['msg']}")
