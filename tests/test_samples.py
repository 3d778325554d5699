"""n > 1: several completions of one prompt, with seeds offset per completion and the prompt's blocks shared."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator

import grpc
import pytest

from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.common.errors import EngineUnavailable, InvalidRequest
from splitserve.link.types import GenerationRequest, SamplingParams
from splitserve.tokenizer.samples import MAX_N, check_n, generate_samples, sample_request
from splitserve.tokenizer.types import TextChunk, TextFinishReason, TextRequest
from splitserve_client import AsyncClient, Chat, GenerationOptions, Tool

from .conftest import Stack

# Long enough for one full 64-token KV block, and unlike any other test's prompt (no earlier cache hit).
PROMPT = " ".join(f"Item {i} of the samples inventory is a {w} lantern." for i, w in
                  enumerate(["red", "green", "blue", "amber", "violet", "silver", "golden", "copper", "bronze"]))


def _request(n: int, seed: int | None = 7) -> TextRequest:
    return TextRequest(GenerationRequest("r", [1, 2, 3], SamplingParams(temperature=1.0, seed=seed)), n=n)


def test_each_completion_has_its_own_id_and_seed_offset() -> None:
    request = _request(3)
    assert [sample_request(request, i).generation.sampling.seed for i in range(3)] == [7, 8, 9]
    assert [sample_request(request, i).generation.request_id for i in range(3)] == ["r", "r.1", "r.2"]
    assert all(sample_request(request, i).n == 1 for i in range(3))
    assert sample_request(_request(3, seed=None), 2).generation.sampling.seed is None  # each draws its own
    assert sample_request(_request(2, seed=2**64 - 1), 1).generation.sampling.seed == 0


def test_n_is_limited_by_name() -> None:
    assert (check_n(0), check_n(1), check_n(MAX_N)) == (1, 1, MAX_N)
    with pytest.raises(InvalidRequest, match=f"max_n={MAX_N}"):
        check_n(MAX_N + 1)


class FakeRun:
    """Each completion: two chunks, the last with its finish; records when each one started."""

    def __init__(self, fail_index: int | None = None) -> None:
        self.started: list[tuple[int, int]] = []  # (index started, chunks yielded so far)
        self.closed: list[str] = []
        self.yielded = 0
        self.fail_index = fail_index

    async def __call__(self, request: TextRequest) -> AsyncGenerator[TextChunk, None]:
        rid = request.generation.request_id
        index = int(rid.split(".")[1]) if "." in rid else 0
        self.started.append((index, self.yielded))
        try:
            if index == self.fail_index:
                raise EngineUnavailable("gone")
            for last in (False, True):
                await asyncio.sleep(0.01)
                self.yielded += 1
                yield TextChunk(f"{index}", finish_reason=TextFinishReason.LENGTH if last else None,
                                completion_tokens=2 if last else 0)
        finally:
            self.closed.append(rid)


async def test_the_others_start_after_the_first_chunk_and_every_chunk_is_tagged() -> None:
    run = FakeRun()
    chunks = [c async for c in generate_samples(run, _request(3))]
    assert run.started[0] == (0, 0) and all(seen >= 1 for _, seen in run.started[1:])
    assert sorted(c.index for c in chunks) == [0, 0, 1, 1, 2, 2]
    assert all(c.text == str(c.index) for c in chunks)
    assert sum(c.finish_reason is not None for c in chunks) == 3


async def test_one_failure_fails_the_request_and_closing_cancels_all() -> None:
    with pytest.raises(EngineUnavailable):
        _ = [c async for c in generate_samples(FakeRun(fail_index=2), _request(3))]
    run = FakeRun()
    stream = generate_samples(run, _request(4))
    await anext(stream)
    await asyncio.sleep(0.005)
    await stream.aclose()
    assert sorted(run.closed) == sorted(f"r.{i}" if i else "r" for i, _ in run.started)


def _generate(n: int, seed: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt=PROMPT, n=n, sampling=pb.SamplingParams(temperature=1.0, seed=seed),
                              stopping=pb.StoppingCriteria(max_new_tokens=16, ignore_eos=True))


async def test_four_samples_differ_reproduce_and_share_the_prompts_blocks(stack: Stack) -> None:
    first = await stack.text.Generate(_generate(4, seed=11))
    texts = [c.text for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2, 3] and len(set(texts)) == 4
    assert first.text == texts[0] and first.choices[2].seed == 13
    assert all(c.usage.completion_tokens == 16 and c.finish_reason == pb.FINISH_REASON_LENGTH for c in first.choices)
    assert first.usage.completion_tokens == 64 and first.usage.prompt_tokens == first.choices[0].usage.prompt_tokens
    # The first computed the prompt; the others reused its full blocks (64 tokens each in these tests).
    assert first.choices[0].usage.cached_prompt_tokens == 0
    assert all(c.usage.cached_prompt_tokens >= 64 for c in first.choices[1:])
    again = await stack.text.Generate(_generate(4, seed=11))
    assert [c.text for c in again.choices] == texts
    streamed = [m async for m in stack.text.GenerateStream(pb.GenerateStreamRequest(
        prompt=PROMPT, n=4, sampling=pb.SamplingParams(temperature=1.0, seed=11),
        stopping=pb.StoppingCriteria(max_new_tokens=16, ignore_eos=True)))]
    by_index = {i: "".join(m.text for m in streamed if m.index == i) for i in range(4)}
    assert list(by_index.values()) == texts
    assert sorted(m.index for m in streamed if m.finish_reason) == [0, 1, 2, 3]


async def test_n_over_the_limit_is_refused(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.text.Generate(_generate(MAX_N + 1, seed=1))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_n=16" in (caught.value.details() or "")


async def test_the_python_client_gets_every_completion_and_a_forced_tool_call(stack: Stack) -> None:
    weather = Tool("get_weather", "Current weather", {"type": "object", "properties": {"city": {"type": "string"}},
                                                      "required": ["city"]})
    async with AsyncClient(stack.public_address) as client:
        completion = await client.generate(PROMPT, GenerationOptions(n=3, temperature=1.0, seed=11,
                                                                     max_new_tokens=16, ignore_eos=True))
        deltas = [d async for d in client.generate_stream(PROMPT, GenerationOptions(
            n=3, temperature=1.0, seed=11, max_new_tokens=16, ignore_eos=True))]
        called = await client.generate(Chat([("user", "Weather in Oslo?")], tools=(weather,),
                                            tool_choice="get_weather"), GenerationOptions(max_new_tokens=40))
    assert completion.choices[0].text == completion.text and len(completion.choices) == 3
    assert ["".join(d.text for d in deltas if d.index == i) for i in range(3)] == [c.text for c in completion.choices]
    [call] = called.tool_calls
    assert call.name == "get_weather" and "city" in json.loads(call.arguments) and called.finish_reason == "tool_calls"
