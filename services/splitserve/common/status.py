"""Maps request errors onto gRPC status codes at the servicer edge."""

from __future__ import annotations

from typing import NoReturn

import grpc

from splitserve.common.errors import Overloaded, RequestError
from splitserve.link.errors import status_code

RETRY_AFTER_KEY = "retry-after-ms"


async def abort_with(context: grpc.aio.ServicerContext, error: RequestError) -> NoReturn:
    """Ends the call with the error's status code and message (and a retry hint when overloaded).

    Trailing metadata set before (the trace id) is kept.
    """
    trailers = tuple(context.trailing_metadata() or ())
    if isinstance(error, Overloaded):
        trailers += ((RETRY_AFTER_KEY, str(error.retry_after_ms)),)
    await context.abort(status_code(error), error.message, trailers)
    raise AssertionError("unreachable")  # context.abort raises
