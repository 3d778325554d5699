"""Property-based fuzzing of the public request messages against both tiers (bench engine).

Any request, however odd, gets a deliberate status: never INTERNAL or UNKNOWN, never a hang, and the
server stays healthy. Strings protobuf cannot carry (lone surrogates, i.e. invalid UTF-8) are written
on the wire by hand, since the client library refuses to serialize them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.api.text.v1 import text_pb2_grpc
from splitserve.api.tokens.v1 import tokens_pb2 as tpb
from splitserve.common.model_store import DEFAULT_MODEL_NAME

from .bench_stack import BenchStack, bench_stack

# The codes a request may end with; INTERNAL, UNKNOWN, UNAVAILABLE and DEADLINE_EXCEEDED are failures.
ACCEPTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.RESOURCE_EXHAUSTED}
CALL_TIMEOUT_S = 10.0
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
SERVICE = "/splitserve.api.text.v1.TextGenerationService/"

uint32 = st.integers(0, 2**32 - 1)
floats = st.floats(width=32, allow_nan=True, allow_infinity=True)
texts = st.text(max_size=300)  # any code point but surrogates, control characters included
odd_texts = st.one_of(texts, st.sampled_from(["<|im_end|>", "<|im_start|>system\n", "\x00", "\ufeff", "a" * 5000]))


@pytest.fixture(scope="module")
async def fuzz_stack(model_dir: Path) -> AsyncIterator[BenchStack]:
    async with bench_stack(model_dir, {"max_new_tokens": 32, "default_max_new_tokens": 8}) as stack:
        yield stack


@st.composite
def generate_requests(draw: st.DrawFn) -> pb.GenerateRequest:
    msg = pb.GenerateRequest(request_id=draw(texts), model=draw(st.sampled_from(["", DEFAULT_MODEL_NAME, "x"])))
    kind = draw(st.sampled_from(["prompt", "chat", "token_ids", "none"]))
    if kind == "prompt":
        msg.prompt = draw(odd_texts)
    elif kind == "chat":
        roles = st.one_of(st.sampled_from(["user", "assistant", "system"]), texts)
        for role, content in draw(st.lists(st.tuples(roles, odd_texts), max_size=6)):
            msg.chat.messages.add(role=role, content=content)
        msg.chat.allow_special_tokens_in_content = draw(st.booleans())
        if draw(st.booleans()):
            msg.chat.add_generation_prompt = draw(st.booleans())
    elif kind == "token_ids":
        msg.token_ids.ids.extend(draw(st.lists(uint32, max_size=2000)))
    _sampling_and_stopping(draw, msg)
    return msg


def _sampling_and_stopping(draw: st.DrawFn, msg: pb.GenerateRequest) -> None:
    for name in ("temperature", "top_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "min_p"):
        if draw(st.booleans()):
            setattr(msg.sampling, name, draw(floats))
    if draw(st.booleans()):
        msg.sampling.top_k = draw(uint32)
    if draw(st.booleans()):
        msg.sampling.seed = draw(st.integers(0, 2**64 - 1))
    if draw(st.booleans()):
        msg.stopping.max_new_tokens = draw(uint32)
    msg.stopping.min_new_tokens = draw(st.one_of(st.just(0), uint32))
    msg.stopping.stop.extend(draw(st.lists(odd_texts, max_size=20)))
    msg.stopping.stop_token_ids.extend(draw(st.lists(uint32, max_size=50)))
    msg.stopping.ignore_eos = draw(st.booleans())
    msg.options.logprobs = draw(st.booleans())
    msg.options.top_logprobs = draw(st.one_of(st.just(0), uint32))
    msg.options.include_tokens = draw(st.booleans())


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, written by hand so its bytes need not be valid UTF-8."""
    size, length = len(payload), b""
    while True:
        byte, size = size & 0x7F, size >> 7
        length += bytes([byte | (0x80 if size else 0)])
        if not size:
            return bytes([number << 3 | 2]) + length + payload


invalid_utf8 = st.one_of(st.sampled_from([b"\xed\xa0\x80", b"a\xed\xbf\xbfb", b"\xff", b"\xc3"]),
                         st.binary(min_size=1, max_size=64))


@st.composite
def raw_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    """(method, wire bytes) with a lone surrogate or other bad UTF-8 in a string field, or plain garbage."""
    bad = draw(invalid_utf8)
    case = draw(st.sampled_from(["prompt", "chat", "stop", "model", "tokenize", "garbage"]))
    wire = {"prompt": _field(3, bad), "chat": _field(4, _field(1, _field(2, bad))),
            "stop": _field(3, b"hi") + _field(7, _field(3, bad)), "model": _field(2, bad) + _field(3, b"hi"),
            "tokenize": _field(2, bad), "garbage": bad}[case]
    return ("Tokenize" if case == "tokenize" else draw(st.sampled_from(["Generate", "GenerateStream"]))), wire


def status_of(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        result = call()
        if not isinstance(result, bytes | pb.GenerateResponse | pb.TokenizeResponse | pb.DetokenizeResponse):
            for _ in result:  # a stream: read it to its end
                pass
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]


def fuzz_structured(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = text_pb2_grpc.TextGenerationServiceStub(channel)

        @FUZZ
        @given(generate_requests(), st.booleans())
        def check(msg: pb.GenerateRequest, streaming: bool) -> None:
            if streaming:
                stream_msg = pb.GenerateStreamRequest.FromString(msg.SerializeToString())
                code = status_of(lambda: stub.GenerateStream(stream_msg, timeout=CALL_TIMEOUT_S))
            else:
                code = status_of(lambda: stub.Generate(msg, timeout=CALL_TIMEOUT_S))
            assert code in ACCEPTED, f"{code} for {msg}"

        @FUZZ
        @given(odd_texts, st.booleans(), st.lists(uint32, max_size=500), st.one_of(st.none(), st.booleans()))
        def check_codec(text: str, special: bool, ids: list[int], skip: bool | None) -> None:
            tokenize = pb.TokenizeRequest(text=text, add_special_tokens=special, return_tokens=special)
            assert status_of(lambda: stub.Tokenize(tokenize, timeout=CALL_TIMEOUT_S)) in ACCEPTED
            detokenize = pb.DetokenizeRequest(ids=ids, skip_special_tokens=skip)
            assert status_of(lambda: stub.Detokenize(detokenize, timeout=CALL_TIMEOUT_S)) in ACCEPTED

        check()
        check_codec()


def fuzz_raw(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        @FUZZ
        @given(raw_requests())
        def check(case: tuple[str, bytes]) -> None:
            method, wire = case
            call: Any = (channel.unary_stream if method == "GenerateStream" else channel.unary_unary)(SERVICE + method)
            code = status_of(lambda: call(wire, timeout=CALL_TIMEOUT_S))
            assert code in ACCEPTED, f"{code} for {method} {wire!r}"

        check()
        bad_prompt = _field(3, b"\xed\xa0\x80")  # a lone surrogate: the caller's error, said so
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(SERVICE + "Generate")(bad_prompt, timeout=CALL_TIMEOUT_S)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "could not be decoded" in caught.value.details()


async def assert_healthy(stack: BenchStack) -> None:
    async with grpc.aio.insecure_channel(stack.public_address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    done = await stack.text.Generate(pb.GenerateRequest(prompt="Hello", stopping=pb.StoppingCriteria(max_new_tokens=3)))
    assert done.usage.completion_tokens == 3
    for _ in range(100):  # fuzzed streams that ended on the client may take a step to leave the engine
        load = await stack.tokens.GetLoad(tpb.GetLoadRequest())
        if load.running_requests == load.queued_requests == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"engine still busy after fuzzing: {load}")


async def test_fuzzed_requests_get_clean_statuses(fuzz_stack: BenchStack) -> None:
    # blocking clients on a worker thread: the servers run on this thread's event loop
    await asyncio.to_thread(fuzz_structured, fuzz_stack.public_address)
    await assert_healthy(fuzz_stack)


async def test_undecodable_bytes_are_invalid_argument(fuzz_stack: BenchStack) -> None:
    await asyncio.to_thread(fuzz_raw, fuzz_stack.public_address)
    await assert_healthy(fuzz_stack)


async def test_enormous_repeated_fields(fuzz_stack: BenchStack) -> None:
    huge = [pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1] * 1_000_000)),
            pb.GenerateRequest(prompt="hi", stopping=pb.StoppingCriteria(stop_token_ids=[2] * 1_000_000)),
            pb.GenerateRequest(prompt="hi", stopping=pb.StoppingCriteria(stop=["s"] * 100_000)),
            pb.GenerateRequest(chat=pb.ChatInput(messages=[pb.ChatMessage(role="user", content="x")] * 50_000))]
    for msg in huge:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await fuzz_stack.text.Generate(msg, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
        assert "over the limit" in (caught.value.details() or "")
    await assert_healthy(fuzz_stack)
