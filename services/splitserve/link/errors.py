"""Request errors ⇄ status codes: the one table the servicers, the client and the engine pipe use."""

from __future__ import annotations

import grpc

from splitserve.common.errors import (
    Cancelled,
    DeadlineExceeded,
    EngineUnavailable,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    ReplicaUnavailable,
    RequestError,
)

# Errors that mean the same on either side of the link, so they pass through as they are.
_PASSED_THROUGH: dict[str, type[RequestError]] = {
    cls.code_name: cls for cls in (InvalidRequest, ModelNotFound, Overloaded, DeadlineExceeded, Cancelled)}
_NAMES = {status.value[0]: status.name for status in grpc.StatusCode}


def status_code(error: RequestError) -> grpc.StatusCode:
    code: grpc.StatusCode = getattr(grpc.StatusCode, error.code_name)
    return code


def code_number(code_name: str) -> int:
    """The google.rpc.Code value of a status name (what RequestError messages on the wire carry)."""
    number: int = getattr(grpc.StatusCode, code_name).value[0]
    return number


def error_from_status(code_name: str, message: str, peer: str | None = None) -> RequestError:
    """The error for a status another process answered.

    With `peer` (the tier that answered) an UNAVAILABLE is a ReplicaUnavailable (the pool retries it
    elsewhere) and any other code an EngineUnavailable, their messages naming the peer once. Without it
    (the engine process) UNAVAILABLE stays EngineUnavailable and anything else is INTERNAL.
    """
    passed = _PASSED_THROUGH.get(code_name)
    if passed is not None:
        return passed(message)
    if peer is None:
        return EngineUnavailable(message) if code_name == "UNAVAILABLE" else RequestError(message)
    unavailable = ReplicaUnavailable if code_name == "UNAVAILABLE" else EngineUnavailable
    return unavailable(f"{peer}: {code_name}: {message}")


def error_from_number(code: int, message: str, peer: str | None = None) -> RequestError:
    return error_from_status(_NAMES.get(code, "UNKNOWN"), message, peer)
