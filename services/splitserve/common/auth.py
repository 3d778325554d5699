"""Optional bearer-token check on the public API, as a server interceptor; the token is never logged."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from splitserve.common.errors import PermissionDenied, RequestError, Unauthenticated
from splitserve.common.rpc_handlers import refusing_handler
from splitserve.link.errors import status_code

TOKEN_ENV = "SPLITSERVE_AUTH_TOKEN"
# Probes and tooling reach these without a token: they reveal nothing about requests.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True)
class Secret:
    """A credential whose value stays out of reprs, logs and tracebacks."""

    value: str = field(repr=False)


def read_token(token_file: str | None, environ: Mapping[str, str]) -> Secret | None:
    """The token from `token_file` if given, else from $SPLITSERVE_AUTH_TOKEN, else None (no check)."""
    raw = Path(token_file).read_text() if token_file else environ.get(TOKEN_ENV)
    if raw is None:
        return None
    token = raw.strip()
    if not token:
        raise ValueError(f"the auth token ({token_file or TOKEN_ENV}) is empty")
    return Secret(token)


def bearer_refusal(authorization: str | None, expected: bytes) -> RequestError | None:
    """Why a call with this `authorization` value is refused (None: it may pass); both APIs check with it."""
    if authorization is None:
        return Unauthenticated("missing `authorization: Bearer <token>`")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return Unauthenticated("the authorization must be `Bearer <token>`")
    if not hmac.compare_digest(token.strip().encode(), expected):  # constant time
        return PermissionDenied("the bearer token is not valid for this service")
    return None


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <token>`: UNAUTHENTICATED when absent, PERMISSION_DENIED when wrong."""

    def __init__(self, token: Secret) -> None:
        self._expected = token.value.encode()

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_SERVICES):
            return handler
        metadata: object = handler_call_details.invocation_metadata or ()
        values = [str(v) for k, v in metadata if k == "authorization"]  # type: ignore[attr-defined]
        refusal = bearer_refusal(values[0] if values else None, self._expected)
        return handler if refusal is None else refusing_handler(handler, status_code(refusal), refusal.message)
