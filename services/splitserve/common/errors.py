"""Request errors raised inside the tiers; the servicers turn them into gRPC status codes."""

from __future__ import annotations


class RequestError(Exception):
    """A request failed for a reason the caller should see; subclasses pick the gRPC status code."""

    code_name = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(RequestError):
    """The request is malformed or beyond a limit (INVALID_ARGUMENT); the message names the limit."""

    code_name = "INVALID_ARGUMENT"


class Unauthenticated(RequestError):
    """The call carries no valid `Bearer <token>` credentials (UNAUTHENTICATED)."""

    code_name = "UNAUTHENTICATED"


class PermissionDenied(RequestError):
    """The call's bearer token is not this service's (PERMISSION_DENIED)."""

    code_name = "PERMISSION_DENIED"


class ModelNotFound(RequestError):
    """The request names a model this server does not serve (NOT_FOUND)."""

    code_name = "NOT_FOUND"


class Overloaded(RequestError):
    """Admission refused: queues are full (RESOURCE_EXHAUSTED); retrying later may succeed."""

    code_name = "RESOURCE_EXHAUSTED"
    retry_after_ms = 200  # sent as the `retry-after-ms` trailer: about a few decode steps of queue turnover


class EngineUnavailable(RequestError):
    """The engine or the generator tier cannot serve right now (UNAVAILABLE); safe to retry."""

    code_name = "UNAVAILABLE"


class NotReady(RequestError):
    """The server is starting or draining (UNAVAILABLE)."""

    code_name = "UNAVAILABLE"


class ReplicaUnavailable(EngineUnavailable):
    """A generator replica answered UNAVAILABLE or its connection broke; another replica may serve the request."""


class DeadlineExceeded(RequestError):
    """The caller's deadline passed before the request finished (DEADLINE_EXCEEDED)."""

    code_name = "DEADLINE_EXCEEDED"


class Cancelled(RequestError):
    """The request was cancelled upstream (CANCELLED)."""

    code_name = "CANCELLED"

