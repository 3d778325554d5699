"""Maps request errors onto gRPC status codes at the servicer edge."""

from __future__ import annotations

from typing import NoReturn

import grpc

from splitserve.common.errors import RequestError


async def abort_with(context: grpc.aio.ServicerContext, error: RequestError) -> NoReturn:
    """Ends the call with the error's status code and message."""
    await context.abort(getattr(grpc.StatusCode, error.code_name), error.message)
    raise AssertionError("unreachable")  # context.abort raises
