"""The HTTP API's refusals and cancellation over the bench engine: 401/403, 429 + Retry-After (admission
shared with gRPC, and the generator's queue), 503, 504, and a client disconnect freeing the engine slot."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from splitserve.api.tokens.v1 import tokens_pb2 as tpb
from splitserve.common.auth import Secret
from splitserve.generator.engines.bench_engine import BenchEngine, StepModel

from .bench_stack import BenchStack, bench_stack
from .test_admission import long_request, wait_for_load

MODEL = "SmolLM2-135M-Instruct"
LIMITS = {"max_inflight_requests": 3, "max_receive_message_bytes": 64 * 1024, "http_address": "127.0.0.1:0"}
LONG = {"model": MODEL, "prompt": "Count:", "max_tokens": 1000, "ignore_eos": True, "temperature": 0}


@pytest.fixture(scope="module")
async def bench(model_dir: Path) -> AsyncIterator[BenchStack]:
    async with bench_stack(model_dir, {"max_batch_size": 3, "max_queued_requests": 1}, LIMITS) as stack:
        yield stack


@contextlib.asynccontextmanager
async def streaming(bench: BenchStack, http: httpx.AsyncClient, **fields: Any) -> AsyncIterator[AsyncIterator[str]]:
    """A streamed completion's lines after its first event; leaving the block closes the connection."""
    body = {**LONG, **fields, "stream": True}
    async with http.stream("POST", f"{bench.http_url}/completions", json=body) as answer:
        assert answer.status_code == 200
        lines = answer.aiter_lines()
        assert (await anext(lines)).startswith("data: ")
        yield lines


async def test_disconnect_mid_stream_frees_the_engine_slot_within_a_step(bench: BenchStack) -> None:
    engine = bench.generator.engine
    assert isinstance(engine, BenchEngine)
    engine._model = StepModel(fixed_s=0.05, per_seq_s=0.0)
    try:
        async with httpx.AsyncClient() as http:
            async with streaming(bench, http):
                await wait_for_load(bench, 1)
                steps_at_close = engine.steps
            await wait_for_load(bench, 0, timeout=2.0)  # the client closed the stream mid-way
        assert engine.steps - steps_at_close <= 2
    finally:
        engine._model = StepModel()


async def test_disconnect_while_waiting_for_a_whole_answer_frees_the_slot(bench: BenchStack) -> None:
    async with httpx.AsyncClient() as http:
        waiting = asyncio.ensure_future(http.post(f"{bench.http_url}/completions", json=LONG))
        await wait_for_load(bench, 1)
        waiting.cancel()  # httpx closes the connection
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
    await wait_for_load(bench, 0, timeout=2.0)


async def test_the_inflight_bound_is_shared_with_grpc_and_refused_with_429_retry_after(bench: BenchStack) -> None:
    grpc_call = bench.text.GenerateStream(long_request())
    await grpc_call.read()
    client = openai.AsyncOpenAI(base_url=bench.http_url, api_key="-", max_retries=0)
    async with httpx.AsyncClient() as first, httpx.AsyncClient() as second, streaming(bench, first), \
            streaming(bench, second), client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.completions.create(model=MODEL, prompt="hi", max_tokens=2)
    grpc_call.cancel()
    headers = caught.value.response.headers
    assert headers["retry-after"] == "1" and headers["retry-after-ms"] == "200"
    assert "max_inflight_requests=3" in caught.value.message
    assert caught.value.body["type"] == "rate_limit_error"  # type: ignore[index]
    await wait_for_load(bench, 0)


async def test_a_full_generator_queue_is_a_429(bench: BenchStack) -> None:
    request = tpb.GenerateRequest(prompt_token_ids=[1, 2, 3], max_new_tokens=1000, ignore_eos=True)
    calls = [bench.tokens.Generate(request) for _ in range(4)]  # max_batch_size 3 + max_queued_requests 1
    for call in calls[:3]:
        await call.read()
    await wait_for_load(bench, 3, queued=1)
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{bench.http_url}/completions", json=LONG)
        streamed = await http.post(f"{bench.http_url}/completions", json={**LONG, "stream": True})
    for call in calls:
        call.cancel()
    for refused in (answer, streamed):  # a stream refused before its first token gets the status too
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "resource_exhausted"
    await wait_for_load(bench, 0)


@pytest.mark.parametrize(("fields", "param"), [
    ({"min_p": 0.1}, "min_p"), ({"repetition_penalty": 1.3}, "repetition_penalty"), ({"min_tokens": 4}, "min_tokens"),
    ({"presence_penalty": 0.5}, "presence_penalty"), ({"seed": 1, "temperature": 0.7}, "seed"),
    ({"logprobs": 1}, "logprobs"),
])
async def test_a_field_the_engine_cannot_honour_is_a_400_naming_it(bench: BenchStack, fields: dict[str, Any],
                                                                    param: str) -> None:
    async with httpx.AsyncClient() as http:  # the bench engine honours none of these
        answer = await http.post(f"{bench.http_url}/completions", json={**LONG, "max_tokens": 2, **fields})
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["param"] == param
    assert error["message"] == f"engine 'bench' cannot honour {param}"


async def test_a_body_over_the_message_size_limit_is_a_400_naming_it(bench: BenchStack) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{bench.http_url}/completions", json={**LONG, "prompt": "x" * 70_000})
    assert answer.status_code == 400 and "max_receive_message_bytes=65536" in answer.json()["error"]["message"]


async def test_a_deadline_that_passes_is_a_504_and_frees_the_engine(bench: BenchStack) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{bench.http_url}/completions", json=LONG, headers={"x-request-timeout": "0.5"})
        bad = await http.post(f"{bench.http_url}/completions", json=LONG, headers={"x-request-timeout": "soon"})
    assert answer.status_code == 504 and answer.json()["error"]["type"] == "timeout"
    assert bad.status_code == 400 and "x-request-timeout" in bad.json()["error"]["message"]
    await wait_for_load(bench, 0, timeout=1.0)


async def test_an_error_after_the_first_token_is_an_sse_error_event(bench: BenchStack) -> None:
    body = {**LONG, "stream": True}
    async with httpx.AsyncClient() as http, http.stream(
            "POST", f"{bench.http_url}/completions", json=body, headers={"x-request-timeout": "0.5"}) as answer:
        lines = [line async for line in answer.aiter_lines() if line]
    assert answer.status_code == 200 and lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2].removeprefix("data: "))["error"]["code"] == "deadline_exceeded"


async def test_bearer_token_401_403_and_open_health(model_dir: Path) -> None:
    async with bench_stack(model_dir, None, {"http_address": "127.0.0.1:0", "auth_token": Secret("s3cret")}) as s:
        async with openai.AsyncOpenAI(base_url=s.http_url, api_key="wrong", max_retries=0) as wrong:
            with pytest.raises(openai.PermissionDeniedError):
                await wrong.completions.create(model=MODEL, prompt="hi", max_tokens=2)
            with pytest.raises(openai.AuthenticationError):  # Omit: the client sends no authorization at all
                await wrong.completions.create(model=MODEL, prompt="hi", max_tokens=2,
                                               extra_headers={"Authorization": openai.Omit()})
        async with openai.AsyncOpenAI(base_url=s.http_url, api_key="s3cret", max_retries=0) as client:
            answer = await client.completions.create(model=MODEL, prompt="hi", max_tokens=2)
            assert answer.usage is not None and answer.usage.completion_tokens == 2
            assert [m.id async for m in client.models.list()] == [MODEL]
        async with httpx.AsyncClient() as http:
            assert (await http.get(s.http_url.removesuffix("/v1") + "/health")).status_code == 200
            missing = await http.get(f"{s.http_url}/models")
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthenticated"


async def test_no_serving_generator_is_a_503_and_health_says_so(model_dir: Path) -> None:
    async with bench_stack(model_dir, None, {"http_address": "127.0.0.1:0"}) as stack:
        await stack.generator.bound.server.stop(0)  # the generator's port goes away; the pool notices
        health_url = stack.http_url.removesuffix("/v1") + "/health"
        async with httpx.AsyncClient() as http:
            for _ in range(100):
                if (await http.get(health_url)).status_code == 503:
                    break
                await asyncio.sleep(0.05)
            assert (await http.get(health_url)).status_code == 503
            answer = await http.post(f"{stack.http_url}/completions", json={**LONG, "max_tokens": 2})
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "unavailable"


async def test_stop_drains_a_stream_in_flight_and_refuses_new_connections(model_dir: Path) -> None:
    async with bench_stack(model_dir, None, {"http_address": "127.0.0.1:0"}) as stack:
        url = stack.http_url
        async with httpx.AsyncClient() as http, streaming(stack, http, max_tokens=100) as lines:
            stopping = asyncio.ensure_future(stack.tokenizer.stop(5))
            rest = [line async for line in lines if line]
            await stopping
        assert rest[-1] == "data: [DONE]"  # the stream finished within the grace period
        assert json.loads(rest[-2].removeprefix("data: "))["choices"][0]["finish_reason"] == "length"
        async with httpx.AsyncClient() as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"{url}/models")
