"""The OpenAI-compatible HTTP API with the official `openai` client (sync, async, streaming, errors) and
plain HTTP, against both tiers on loopback with the real default model; answers are compared with gRPC's."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import httpx
import openai
import pytest
from opentelemetry.trace import SpanKind

from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.common.request_log import REQUEST_LOGGER

from .conftest import Stack
from .test_generation import PARIS, greedy
from .test_observability import CLIENT_TRACE_ID, TRACEPARENT, eventually, service

MODEL = "SmolLM2-135M-Instruct"
T = TypeVar("T")


@pytest.fixture(scope="module")
async def client(stack: Stack) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=stack.http_url, api_key="unused", max_retries=0) as aclient:
        yield aclient


async def in_thread(call: Callable[[], T]) -> T:
    """The sync client blocks; the servers share this test's event loop, so it runs on a thread."""
    return await asyncio.to_thread(call)


async def grpc_text(stack: Stack, request: pb.GenerateStreamRequest) -> tuple[str, pb.GenerateStreamResponse]:
    parts = [part async for part in stack.text.GenerateStream(request)]
    return "".join(p.text for p in parts), parts[-1]


def chat_request(content: str, max_new_tokens: int) -> pb.GenerateStreamRequest:
    msg = greedy("", max_new_tokens)
    msg.ClearField("prompt")
    msg.chat.messages.add(role="user", content=content)
    return msg


async def test_sync_client_chat_completion_equals_grpc(stack: Stack) -> None:
    with openai.OpenAI(base_url=stack.http_url, api_key="unused", max_retries=0) as sync:
        answer = await in_thread(lambda: sync.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Name three colours."}], max_tokens=12,
            temperature=0))
    text, last = await grpc_text(stack, chat_request("Name three colours.", 12))
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == text and text
    assert choice.finish_reason == "length" and answer.model == MODEL and answer.object == "chat.completion"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (last.usage.prompt_tokens, 12)
    assert answer.usage.total_tokens == last.usage.prompt_tokens + 12


async def test_sync_client_completion_says_paris(stack: Stack) -> None:
    with openai.OpenAI(base_url=stack.http_url, api_key="unused", max_retries=0) as sync:
        answer = await in_thread(lambda: sync.completions.create(model=MODEL, prompt=PARIS, max_tokens=8,
                                                                 temperature=0))
    text, _ = await grpc_text(stack, greedy(PARIS, 8))
    assert answer.choices[0].text == text and text.startswith(" Paris")


async def test_async_streaming_chat_equals_the_whole_answer_and_ends_with_usage(
        client: openai.AsyncOpenAI) -> None:
    messages: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi! 👋 ça va?"}]
    whole = await client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=24,
                                                 temperature=0)
    stream = await client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=24,
                                                  temperature=0, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert all(c.usage is None for c in chunks[:-1]) and chunks[-1].choices == []
    assert chunks[-1].usage == whole.usage
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"


async def test_async_streaming_completion_with_a_stop_string(client: openai.AsyncOpenAI, stack: Stack) -> None:
    text, _ = await grpc_text(stack, greedy(PARIS, 16))
    stop = text[4:7]  # inside the greedy continuation, so it must match
    stream = await client.completions.create(model=MODEL, prompt=PARIS, max_tokens=16, temperature=0,
                                             stop=[stop], stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks) == text[:text.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].choices[0].model_extra["stop_reason"] == stop  # type: ignore[index]


async def test_token_id_prompt_and_seeded_sampling(client: openai.AsyncOpenAI, stack: Stack) -> None:
    ids = (await stack.text.Tokenize(pb.TokenizeRequest(text=PARIS))).ids
    by_ids = await client.completions.create(model=MODEL, prompt=list(ids), max_tokens=6, temperature=0)
    by_text = await client.completions.create(model=MODEL, prompt=PARIS, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    sampled = [await client.completions.create(model=MODEL, prompt=PARIS, max_tokens=8, temperature=1.0, top_p=0.9,
                                               seed=7, presence_penalty=0.5, frequency_penalty=0.5)
               for _ in range(2)]
    assert sampled[0].choices[0].text == sampled[1].choices[0].text  # batch-invariant seeds


async def test_vllm_extras_are_honoured(client: openai.AsyncOpenAI) -> None:
    answer = await client.completions.create(
        model=MODEL, prompt=PARIS, max_tokens=10, temperature=0.8, seed=3,
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.2, "min_tokens": 10, "ignore_eos": True})
    assert answer.usage is not None and answer.usage.completion_tokens == 10
    assert answer.choices[0].finish_reason == "length"


async def test_chat_logprobs_and_top_logprobs(client: openai.AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                  max_tokens=4, temperature=0, logprobs=True, top_logprobs=3)
    content = answer.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 4
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.token == entry.top_logprobs[0].token  # greedy takes the most likely token
    assert "".join(e.token for e in content) == answer.choices[0].message.content


async def test_completion_logprobs(client: openai.AsyncOpenAI) -> None:
    answer = await client.completions.create(model=MODEL, prompt=PARIS, max_tokens=3, temperature=0, logprobs=2)
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens is not None and len(logprobs.tokens) == 3
    assert logprobs.text_offset == [0, len(logprobs.tokens[0]), len(logprobs.tokens[0]) + len(logprobs.tokens[1])]
    assert logprobs.top_logprobs is not None and all(len(top) == 2 for top in logprobs.top_logprobs)


BAD_FIELDS = [
    ({"n": 17}, "n"),
    ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
    ({"response_format": {"type": "json_object"}, "guided_regex": "a+"}, "guided_regex"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"logit_bias": {"1": 5}}, "logit_bias"),
    ({"frobnicate": 1}, "frobnicate"),
    ({"temperature": 9}, "temperature"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
]


@pytest.mark.parametrize(("fields", "param"), BAD_FIELDS)
async def test_fields_not_honoured_are_a_400_naming_them(client: openai.AsyncOpenAI, fields: dict[str, Any],
                                                         param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                             max_tokens=2, extra_body=fields)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param and param in error["message"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_argument"


async def test_limits_are_a_400_naming_the_limit(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="max_new_tokens=256"):
        await client.completions.create(model=MODEL, prompt=PARIS, max_tokens=5000)
    with pytest.raises(openai.BadRequestError, match="max_stop_sequences=16"):
        await client.completions.create(model=MODEL, prompt=PARIS, max_tokens=2, stop=[str(i) for i in range(17)])


async def test_unknown_model_is_a_404_counted_and_logged(client: openai.AsyncOpenAI,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=REQUEST_LOGGER), pytest.raises(openai.NotFoundError) as caught:
        await client.completions.create(model="gpt-5", prompt=PARIS, max_tokens=2,
                                        extra_headers={"x-request-id": "no-such-model"})
    assert caught.value.body["code"] == "not_found" and MODEL in caught.value.message  # type: ignore[index]
    [line] = [r.fields for r in caplog.records if r.name == REQUEST_LOGGER]  # type: ignore[attr-defined]
    assert (line["request_id"], line["api"], line["status"]) == ("no-such-model", "http", "NOT_FOUND")


async def test_models_health_and_metrics(client: openai.AsyncOpenAI, stack: Stack) -> None:
    models = [m async for m in client.models.list()]
    assert [m.id for m in models] == [MODEL] and models[0].owned_by == "splitserve"
    root = stack.http_url.removesuffix("/v1")
    async with httpx.AsyncClient() as http:
        health = await http.get(f"{root}/health")
        metrics = await http.get(f"{root}/metrics")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert metrics.status_code == 200 and "splitserve_requests_total" in metrics.text


async def test_raw_sse_stream_ends_with_done(stack: Stack) -> None:
    body = {"model": MODEL, "prompt": PARIS, "max_tokens": 5, "temperature": 0, "stream": True}
    async with httpx.AsyncClient() as http, http.stream("POST", f"{stack.http_url}/completions", json=body) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in answer.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert events[-1]["choices"][0]["finish_reason"] == "length"


async def test_an_http_server_span_starts_the_trace_and_the_log_says_http(
        stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    stack.spans.clear()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "user": "team-a"}
    with caplog.at_level(logging.INFO, logger=REQUEST_LOGGER):
        async with httpx.AsyncClient() as http:
            answer = await http.post(f"{stack.http_url}/chat/completions", json=body,
                                     headers={"traceparent": TRACEPARENT, "x-request-id": "http-trace-me"})
        await eventually(lambda: any(r.name == REQUEST_LOGGER and r.fields["tier"] == "tokenizer"  # type: ignore[attr-defined]
                                     for r in caplog.records))
    assert answer.status_code == 200 and answer.headers["x-trace-id"] == CLIENT_TRACE_ID
    assert answer.headers["x-request-id"] == "http-trace-me" and answer.json()["id"] == "chatcmpl-http-trace-me"
    await eventually(lambda: any(s.kind == SpanKind.SERVER and service(s) == "splitserve-tokenizer"
                                 for s in stack.spans.get_finished_spans()))
    spans = stack.spans.get_finished_spans()
    assert {s.context.trace_id for s in spans} == {int(CLIENT_TRACE_ID, 16)}
    [server] = [s for s in spans if s.kind == SpanKind.SERVER and service(s) == "splitserve-tokenizer"]
    assert server.instrumentation_scope is not None
    assert server.instrumentation_scope.name == "opentelemetry.instrumentation.asgi"
    assert server.attributes is not None and server.attributes["splitserve.request_id"] == "http-trace-me"
    assert server.attributes["enduser.id"] == "team-a"
    assert {"tokenize", "detokenize"} <= {s.name for s in spans if s.parent is not None
                                          and s.parent.span_id == server.context.span_id}
    assert sum(1 for s in spans if service(s) == "splitserve-tokenizer") <= 5  # no span per message
    [line] = [r.fields for r in caplog.records  # type: ignore[attr-defined]
              if r.name == REQUEST_LOGGER and r.fields["tier"] == "tokenizer"]  # type: ignore[attr-defined]
    assert line["api"] == "http" and line["request_id"] == "http-trace-me" and line["trace_id"] == CLIENT_TRACE_ID


async def test_n_completions_each_with_its_index_seed_offset_and_usage(client: openai.AsyncOpenAI) -> None:
    prompt = " ".join(f"Row {i} of the HTTP samples table holds a {w} kite." for i, w in
                      enumerate(["red", "teal", "gold", "grey", "pink", "navy", "lime", "plum", "rust"]))
    whole = await client.completions.create(model=MODEL, prompt=prompt, n=3, max_tokens=8, temperature=1.0,
                                            seed=21, extra_body={"ignore_eos": True})
    texts = [c.text for c in whole.choices]
    assert [c.index for c in whole.choices] == [0, 1, 2] and len(set(texts)) == 3
    assert whole.usage is not None and whole.usage.completion_tokens == 24
    one = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=1.0, seed=22,
                                          extra_body={"ignore_eos": True})
    assert one.choices[0].text == texts[1]  # completion 1 sampled with seed + 1
    stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}], n=2,
                                                  max_tokens=6, temperature=1.0, seed=5, stream=True,
                                                  stream_options={"include_usage": True},
                                                  extra_body={"ignore_eos": True})
    parts: dict[int, str] = {0: "", 1: ""}
    finished, usage = [], None
    async for event in stream:
        for choice in event.choices:
            parts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.append(choice.index)
        usage = event.usage or usage
    assert sorted(finished) == [0, 1] and all(parts.values())
    assert usage is not None and usage.completion_tokens == 12  # the prompt once, both completions' tokens
