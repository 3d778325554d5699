"""presence_penalty, frequency_penalty, min_p and cached_prompt_tokens across every seam: protos, plain
types, both tiers' conversions, the multiplexed path, the client, and the real stack."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path

import grpc
import pytest

from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.api.tokens.v1 import tokens_pb2 as tpb
from splitserve.link import convert as gen_convert
from splitserve.link.multiplex import merge
from splitserve.link.types import (
    EngineCapabilities,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
    TokenOutput,
)
from splitserve.tokenizer import pb_convert as text_convert
from splitserve.tokenizer.pipeline import generate_text
from splitserve.tokenizer.text_codec import TextCodec
from splitserve.tokenizer.types import TextChunk, TextFinishReason, TextRequest
from splitserve_client.types import GenerationOptions, build_request, completion_from_pb, delta_from_pb

from .conftest import Stack

NEW_FIELDS = ("presence_penalty", "frequency_penalty", "min_p")
SET = {"presence_penalty": 0.5, "frequency_penalty": -1.5, "min_p": 0.25}  # exact in float32
ZERO = dict.fromkeys(NEW_FIELDS, 0.0)


# -- generator tier: tokens pb ⇄ plain -----------------------------------------------------------------

@pytest.mark.parametrize("values", [SET, ZERO, {"min_p": 1.0}])
def test_token_api_sampling_round_trips(values: dict[str, float]) -> None:
    msg = tpb.SamplingParams(temperature=0.7, **values)
    plain = gen_convert.sampling_from_pb(msg)
    assert {name: getattr(plain, name) for name in values} == values
    assert gen_convert.sampling_to_pb(plain) == msg


def test_unset_stays_unset_and_zero_stays_set_on_the_token_api() -> None:
    assert gen_convert.sampling_from_pb(tpb.SamplingParams()) == SamplingParams()
    back = gen_convert.sampling_to_pb(SamplingParams(min_p=0.0))
    assert back.HasField("min_p") and not back.HasField("presence_penalty") and not back.HasField("frequency_penalty")
    assert gen_convert.sampling_from_pb(back).min_p == 0.0


def test_generate_request_carries_the_new_sampling_fields() -> None:
    request = GenerationRequest("r", [1, 2], SamplingParams(presence_penalty=0.5, min_p=0.0))
    back = gen_convert.request_from_pb(tpb.GenerateRequest.FromString(
        gen_convert.request_to_pb(request).SerializeToString()))
    assert back.sampling == request.sampling and back.sampling.frequency_penalty is None


def test_cached_prompt_tokens_ride_on_the_final_message_both_ways() -> None:
    final = GenerationChunk([TokenOutput(7)], FinishReason.LENGTH, None, 9, 1, None, num_cached_prompt_tokens=4)
    msg = gen_convert.chunk_to_pb(final)
    assert msg.cached_prompt_tokens == 4 and msg.prompt_tokens == 9
    assert gen_convert.chunk_from_pb(msg) == final
    assert gen_convert.chunk_from_pb(gen_convert.chunk_to_pb(GenerationChunk([TokenOutput(7)]))) == GenerationChunk(
        [TokenOutput(7)])


def test_multiplexed_deltas_keep_cached_prompt_tokens_when_merged() -> None:
    outputs = gen_convert.outputs_to_pb([(3, GenerationChunk([TokenOutput(5)])),
                                         (3, GenerationChunk([TokenOutput(6)], FinishReason.EOS_TOKEN, 2, 8, 2, None,
                                                             num_cached_prompt_tokens=6))])
    merged = merge([gen_convert.delta_from_pb(d) for d in outputs.deltas])  # type: ignore[misc]
    assert [t.token_id for t in merged.tokens] == [5, 6]
    assert (merged.num_cached_prompt_tokens, merged.num_prompt_tokens, merged.stop_token_id) == (6, 8, 2)


def test_capabilities_report_the_new_flags() -> None:
    caps = gen_convert.capabilities_to_pb(EngineCapabilities(presence_penalty=True, min_p=True, logprobs=True))
    assert (caps.presence_penalty, caps.frequency_penalty, caps.min_p, caps.logprobs) == (True, False, True, True)
    assert gen_convert.capabilities_to_pb(EngineCapabilities()) == tpb.EngineCapabilities()


# -- tokenizer tier: text pb → plain → token pb, and usage out ---------------------------------------------

@pytest.mark.parametrize("values", [SET, ZERO])
def test_public_sampling_reaches_the_token_api_unchanged(values: dict[str, float]) -> None:
    plain = text_convert.sampling_from_pb(pb.SamplingParams(**values))
    assert {name: getattr(plain, name) for name in values} == values
    assert gen_convert.sampling_to_pb(plain) == tpb.SamplingParams(**values)


def test_unset_public_sampling_stays_unset() -> None:
    assert text_convert.sampling_from_pb(pb.SamplingParams()) == SamplingParams()


@pytest.fixture(scope="module")
def codec(model_dir: Path) -> TextCodec:
    return TextCodec(str(model_dir))


def test_usage_carries_cached_prompt_tokens_to_stream_and_unary(codec: TextCodec) -> None:
    chunks = [TextChunk("a"), TextChunk("b", finish_reason=TextFinishReason.LENGTH, prompt_tokens=9,
                                        completion_tokens=2, cached_prompt_tokens=5)]
    first, last = (text_convert.stream_response(chunk, "r", codec) for chunk in chunks)
    assert not first.HasField("usage")
    assert last.usage == pb.Usage(prompt_tokens=9, completion_tokens=2, cached_prompt_tokens=5)
    assert text_convert.unary_response(chunks, "r", "m", codec).usage.cached_prompt_tokens == 5


class _FinalChunkGenerator:
    """A generator tier whose last chunk reports a prefix-cache hit."""

    def __init__(self, chunks: list[GenerationChunk]) -> None:
        self.chunks = chunks

    async def generate(self, request: GenerationRequest,
                       timeout: float | None) -> AsyncGenerator[GenerationChunk, None]:
        for chunk in self.chunks:
            yield chunk


@pytest.mark.parametrize("stop", [(), ("zzz",)])
async def test_the_pipeline_passes_the_engines_cached_prompt_tokens_on(codec: TextCodec, stop: tuple[str, ...]) -> None:
    ids = codec.encode_text(" hello zzz")
    chunks = [GenerationChunk([TokenOutput(ids[0])]),
              GenerationChunk([TokenOutput(i) for i in ids[1:]], FinishReason.LENGTH, None, 3, len(ids), None,
                              num_cached_prompt_tokens=2)]
    request = TextRequest(GenerationRequest("r", [1, 2, 3]), stop=stop)
    out = [c async for c in generate_text(codec, _FinalChunkGenerator(chunks), request, None)]  # type: ignore[arg-type]
    assert out[-1].finish_reason is not None and out[-1].cached_prompt_tokens == 2
    assert out[-1].prompt_tokens == 3


# -- client -----------------------------------------------------------------------------------------------

def test_client_sends_the_new_sampling_fields_and_reads_cached_prompt_tokens() -> None:
    msg = build_request("hi", GenerationOptions(presence_penalty=0.5, frequency_penalty=0.0))
    assert msg.sampling.presence_penalty == 0.5 and msg.sampling.HasField("frequency_penalty")
    assert not msg.sampling.HasField("min_p")
    usage = pb.Usage(prompt_tokens=4, completion_tokens=1, cached_prompt_tokens=3)
    assert delta_from_pb(pb.GenerateStreamResponse(finish_reason=pb.FINISH_REASON_LENGTH,
                                                   usage=usage)).cached_prompt_tokens == 3
    assert completion_from_pb(pb.GenerateResponse(usage=usage)).cached_prompt_tokens == 3


# -- the real stack (transformers engine: none of the three) -----------------------------------------------

def _request(**sampling: float) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt="The capital of France is", sampling=pb.SamplingParams(**sampling),
                              stopping=pb.StoppingCriteria(max_new_tokens=4))


@pytest.mark.parametrize("field", NEW_FIELDS)
async def test_the_default_engine_serves_each_new_field(stack: Stack, field: str) -> None:
    reply = await stack.text.Generate(_request(**{field: 0.5}))  # engines without it: see test_validation.py
    assert reply.usage.completion_tokens == 4


async def test_out_of_range_penalties_are_refused_before_capabilities(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.text.Generate(_request(frequency_penalty=2.5))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "frequency_penalty must be in [-2, 2]" in (caught.value.details() or "")


async def test_neutral_values_pass_and_usage_reports_no_cached_prompt_tokens(stack: Stack) -> None:
    reply = await stack.text.Generate(_request(**ZERO))
    assert reply.usage.prompt_tokens == 5 and reply.usage.completion_tokens == 4
    assert reply.usage.cached_prompt_tokens == 0
    parts = [p async for p in stack.text.GenerateStream(pb.GenerateStreamRequest.FromString(
        _request().SerializeToString()))]
    assert parts[-1].usage.prompt_tokens == 5 and parts[-1].usage.cached_prompt_tokens == 0


async def test_the_generator_reports_the_new_capabilities_and_no_cached_tokens(stack: Stack) -> None:
    info = await stack.tokens.GetModelInfo(tpb.GetModelInfoRequest())
    caps = info.capabilities
    assert (caps.presence_penalty, caps.frequency_penalty, caps.min_p, caps.logprobs) == (True, True, True, True)
    request = tpb.GenerateRequest(prompt_token_ids=[1, 2, 3], max_new_tokens=2)
    last = [m async for m in stack.tokens.Generate(request)][-1]
    assert last.finish_reason != tpb.FINISH_REASON_UNSPECIFIED
    assert last.prompt_tokens == 3 and last.cached_prompt_tokens == 0
