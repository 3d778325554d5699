"""The OpenAI-compatible HTTP API as an ASGI app (Starlette routing, OpenTelemetry's ASGI middleware).

Every generation goes through the same TextFrontend as gRPC's Generate: one tokenization, the same
detokenizer and stop strings, routing, limits, the shared in-flight bound and the bearer token.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from splitserve.common.admission import InflightLimit
from splitserve.common.auth import Secret, bearer_refusal
from splitserve.common.errors import InvalidRequest, NotReady, RequestError
from splitserve.common.request_telemetry import TRACE_ID_METADATA, TrackedRequest, trace_id_of
from splitserve.tokenizer.frontend import TextFrontend, pool_info
from splitserve.tokenizer.http.errors import error_body, error_headers, status_of
from splitserve.tokenizer.http.requests import Plan, Planner, chat_plan, completion_plan
from splitserve.tokenizer.http.responses import ResponseShaper
from splitserve.tokenizer.http.streaming import GenerationResponse

TIMEOUT_HEADER = "x-request-timeout"  # seconds: the request's deadline (gRPC callers send theirs in the call)
REQUEST_ID_HEADER = "x-request-id"
UNTRACED_PATHS = "/health,/metrics"  # probes and scrapes would make a trace every few seconds


class OpenAIApi:
    """The endpoints, over one TextFrontend; `serving()` says whether the tier takes requests (readiness)."""

    def __init__(self, frontend: TextFrontend, limit: InflightLimit, serving: Callable[[], bool],
                 auth_token: Secret | None) -> None:
        self._frontend, self._limit, self._serving = frontend, limit, serving
        self._expected = auth_token.value.encode() if auth_token is not None else None
        self._created = int(time.time())

    def routes(self) -> list[Route]:
        return [Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/health", self.health, methods=["GET"]),
                Route("/metrics", self.metrics, methods=["GET"])]

    async def chat_completions(self, request: Request) -> Any:
        return await self._generate(request, chat_plan)

    async def completions(self, request: Request) -> Any:
        return await self._generate(request, completion_plan)

    async def _generate(self, request: Request, planner: Planner) -> Any:
        headers = _answer_headers(request)
        try:
            self._authorize(request)
            plan, time_remaining = await self._checked(request, planner, headers[REQUEST_ID_HEADER])
            if not self._limit.try_acquire():
                raise self._limit.refusal()
        except RequestError as error:
            return error_response(error, headers)
        try:
            return self._respond(plan, headers, time_remaining)
        except BaseException:
            self._limit.release()
            raise

    async def _checked(self, request: Request, planner: Planner,
                       request_id: str) -> tuple[Plan, Callable[[], float | None]]:
        """The request, converted and checked before any slot is taken: bad input or a field its engine cannot
        honour (400), an unknown model (404), the tier starting (503). A refusal here is counted and logged as
        one the pipeline makes (gRPC's refusals of the same kinds come from inside it)."""
        try:
            plan = planner(await self._body(request))
            plan.check_engine(pool_info(self._frontend.pool(plan.model)).engine_info)
            plan.parsing(self._frontend.tool_call_parser, self._frontend.config.reasoning_parser)
            return plan, _deadline(request)
        except RequestError as error:
            with contextlib.suppress(RequestError), self._frontend.tracker.track(request_id, "http"):
                raise error from None
            raise

    def _respond(self, plan: Plan, headers: dict[str, str],
                 time_remaining: Callable[[], float | None]) -> GenerationResponse:
        frontend, request_id = self._frontend, headers[REQUEST_ID_HEADER]

        def build(prompt_ids: list[int]) -> Any:
            return plan.text_request(request_id, prompt_ids, frontend.config, frontend.tool_call_parser)

        def on_start(tracked: TrackedRequest) -> None:
            if plan.user:
                tracked.span.set_attribute("enduser.id", plan.user)

        chunks = frontend.generate(request_id, plan.model, plan.text_input, build, time_remaining, "http", on_start)
        shaper = ResponseShaper(plan, request_id, plan.model, frontend.codec)
        return GenerationResponse(chunks, shaper, plan.stream, plan.include_usage, headers, self._limit.release)

    async def models(self, request: Request) -> Response:
        headers = _answer_headers(request)
        try:
            self._authorize(request)
            pools = self._frontend.pools
        except RequestError as error:
            return error_response(error, headers)
        data = [{"id": model, "object": "model", "created": self._created, "owned_by": "splitserve",
                 "max_model_len": pool_info(pool).engine_info.max_total_tokens}
                for model in pools.models if (pool := pools.get(model)) is not None and pool.info is not None]
        return JSONResponse({"object": "list", "data": data}, headers=headers)

    async def health(self, request: Request) -> Response:
        """200 while the tier takes requests (as grpc.health.v1 SERVING), 503 otherwise; no token needed."""
        if self._serving():
            return JSONResponse({"status": "ok"})
        return error_response(NotReady("not serving: starting, draining or no generator replica is usable"), {})

    async def metrics(self, request: Request) -> Response:
        """The tier's Prometheus metrics, as on --metrics-port."""
        registry = self._frontend.tracker.telemetry.metrics.registry
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def _body(self, request: Request) -> bytes:
        """The request body, within --max-receive-message-bytes (the limit gRPC requests have too)."""
        limit, size, chunks = self._frontend.config.max_receive_message_bytes, 0, []
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise InvalidRequest(f"the request body is over the limit max_receive_message_bytes={limit}")
            chunks.append(chunk)
        return b"".join(chunks)

    def _authorize(self, request: Request) -> None:
        if self._expected is None:
            return
        refusal = bearer_refusal(request.headers.get("authorization"), self._expected)
        if refusal is not None:
            raise refusal


def _answer_headers(request: Request) -> dict[str, str]:
    """The request id (the client's `x-request-id`, else a new one) and the trace id of the server span."""
    headers = {REQUEST_ID_HEADER: request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex}
    trace_id = trace_id_of(trace.get_current_span())
    if trace_id:
        headers[TRACE_ID_METADATA] = trace_id
    return headers


def _deadline(request: Request) -> Callable[[], float | None]:
    """The time left of the `x-request-timeout` header's deadline (None: no deadline)."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return lambda: None
    try:
        seconds = float(raw)
    except ValueError:
        raise InvalidRequest(f"{TIMEOUT_HEADER} must be a number of seconds, got {raw!r}") from None
    if not seconds > 0:
        raise InvalidRequest(f"{TIMEOUT_HEADER} must be positive, got {raw!r}")
    deadline = time.monotonic() + seconds
    return lambda: max(0.0, deadline - time.monotonic())


def error_response(error: RequestError, headers: dict[str, str]) -> Response:
    return JSONResponse(error_body(error), status_code=status_of(error).status,
                        headers={**headers, **error_headers(error)})


def build_app(api: OpenAIApi, tracer_provider: TracerProvider | None) -> Any:
    """The ASGI app; with tracing on, OpenTelemetry's ASGI middleware opens each request's server span."""
    middleware = []
    if tracer_provider is not None:
        middleware.append(Middleware(OpenTelemetryMiddleware, tracer_provider=tracer_provider,
                                     excluded_urls=UNTRACED_PATHS, exclude_spans=["receive", "send"]))
    return Starlette(routes=api.routes(), middleware=middleware)
