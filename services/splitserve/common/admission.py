"""Admission control at a tier's edge: a bound on requests in flight, refused with a retry hint."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any

import grpc

from splitserve.common.errors import Overloaded
from splitserve.common.rpc_handlers import wrap_handler
from splitserve.common.status import RETRY_AFTER_KEY


class InflightLimit:
    """Counts calls in flight; `try_acquire` fails once `limit` are running."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the in-flight limit must be at least 1")
        self.limit = limit
        self.in_flight = 0

    def try_acquire(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1

    def refusal(self) -> Overloaded:
        """The error a call beyond the limit gets (both APIs send it, with its retry hint)."""
        return Overloaded(f"server busy: {self.limit} requests in flight, the limit "
                          f"max_inflight_requests={self.limit}; retry later")


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls to `methods` beyond the in-flight limit with RESOURCE_EXHAUSTED before any work."""

    def __init__(self, limit: InflightLimit, methods: Collection[str]) -> None:
        self.limit = limit
        self._methods = frozenset(methods)

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method not in self._methods:
            return handler
        return wrap_handler(handler, self._admit, handler.request_deserializer)

    async def _admit(self, request: Any, context: grpc.aio.ServicerContext) -> Callable[[], None]:
        # Counted inside the call (not in intercept_service) so that every acquire meets its release.
        if not self.limit.try_acquire():
            refusal = self.limit.refusal()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal.message,
                                ((RETRY_AFTER_KEY, str(refusal.retry_after_ms)),))
        return self.limit.release
