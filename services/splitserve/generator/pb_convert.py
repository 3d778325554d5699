"""Internal token-API messages ⇄ the generator's plain types, both ways (generator servicer, tokenizer client)."""

from __future__ import annotations

from splitserve.api.tokens.v1 import tokens_pb2 as pb
from splitserve.link.types import (
    EngineCapabilities,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
    TokenOutput,
)

_FINISH = {
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.EOS_TOKEN: pb.FINISH_REASON_EOS_TOKEN,
    FinishReason.STOP_TOKEN: pb.FINISH_REASON_STOP_TOKEN,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
}


def sampling_from_pb(s: pb.SamplingParams) -> SamplingParams:
    return SamplingParams(
        temperature=s.temperature if s.HasField("temperature") else None,
        top_k=s.top_k if s.HasField("top_k") else None,
        top_p=s.top_p if s.HasField("top_p") else None,
        repetition_penalty=s.repetition_penalty if s.HasField("repetition_penalty") else None,
        seed=s.seed if s.HasField("seed") else None,
        min_p=s.min_p if s.HasField("min_p") else None,
        presence_penalty=s.presence_penalty if s.HasField("presence_penalty") else None,
        frequency_penalty=s.frequency_penalty if s.HasField("frequency_penalty") else None,
    )


def sampling_to_pb(s: SamplingParams) -> pb.SamplingParams:
    """None leaves a field unset (protobuf skips None in constructors)."""
    return pb.SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                             repetition_penalty=s.repetition_penalty, seed=s.seed, min_p=s.min_p,
                             presence_penalty=s.presence_penalty, frequency_penalty=s.frequency_penalty)


def capabilities_to_pb(caps: EngineCapabilities) -> pb.EngineCapabilities:
    return pb.EngineCapabilities(
        seed=caps.seed, repetition_penalty=caps.repetition_penalty, min_new_tokens=caps.min_new_tokens,
        max_top_logprobs=caps.max_top_logprobs, logprobs=caps.logprobs, presence_penalty=caps.presence_penalty,
        frequency_penalty=caps.frequency_penalty, min_p=caps.min_p)


def request_from_pb(msg: pb.GenerateRequest) -> GenerationRequest:
    return GenerationRequest(
        request_id=msg.request_id or "anonymous",
        prompt_token_ids=list(msg.prompt_token_ids),
        sampling=sampling_from_pb(msg.sampling),
        max_new_tokens=msg.max_new_tokens if msg.HasField("max_new_tokens") else None,
        min_new_tokens=msg.min_new_tokens,
        stop_token_ids=tuple(msg.stop_token_ids),
        ignore_eos=msg.ignore_eos,
        logprobs=msg.logprobs,
        top_logprobs=msg.top_logprobs,
    )


def chunk_to_pb(chunk: GenerationChunk) -> pb.GenerateResponse:
    msg = pb.GenerateResponse()
    _fill_response(msg, chunk)
    return msg


def chunk_to_delta(stream_id: int, chunk: GenerationChunk) -> pb.RequestDelta:
    """A GenerateMany delta, its response filled in place (building one and copying it in costs twice)."""
    delta = pb.RequestDelta(stream_id=stream_id)
    _fill_response(delta.response, chunk)
    return delta


def _fill_response(msg: pb.GenerateResponse, chunk: GenerationChunk) -> None:
    add = msg.tokens.add
    for token in chunk.tokens:
        if token.logprob is None and not token.top_logprobs:
            add(id=token.token_id)
        else:
            add(id=token.token_id, logprob=token.logprob,
                top_logprobs=[pb.TopLogprob(id=i, logprob=lp) for i, lp in token.top_logprobs])
    if chunk.finish_reason is not None:
        msg.finish_reason = _FINISH[chunk.finish_reason]
        msg.prompt_tokens = chunk.num_prompt_tokens
        msg.completion_tokens = chunk.num_generated_tokens
        msg.cached_prompt_tokens = chunk.num_cached_prompt_tokens
        if chunk.seed is not None:
            msg.seed = chunk.seed
        if chunk.stop_token_id is not None:
            msg.stop_token_id = chunk.stop_token_id


_FINISH_FROM_PB = {value: reason for reason, value in _FINISH.items()}


def request_to_pb(request: GenerationRequest) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=request.request_id, prompt_token_ids=request.prompt_token_ids,
        sampling=sampling_to_pb(request.sampling),
        max_new_tokens=request.max_new_tokens, min_new_tokens=request.min_new_tokens,
        stop_token_ids=list(request.stop_token_ids), ignore_eos=request.ignore_eos,
        logprobs=request.logprobs, top_logprobs=request.top_logprobs,
    )


def chunk_from_pb(msg: pb.GenerateResponse) -> GenerationChunk:
    tokens = [_token_from_pb(t) for t in msg.tokens]
    if msg.finish_reason == pb.FINISH_REASON_UNSPECIFIED:
        return GenerationChunk(tokens)
    return GenerationChunk(
        tokens, _FINISH_FROM_PB[msg.finish_reason], msg.stop_token_id if msg.HasField("stop_token_id") else None,
        msg.prompt_tokens, msg.completion_tokens, msg.seed if msg.HasField("seed") else None,
        msg.cached_prompt_tokens,
    )


# Per-token conversions run once per generated token on both tiers: the common case (no logprobs)
# takes the short path.

def _token_from_pb(token: pb.Token) -> TokenOutput:
    if not token.HasField("logprob") and not token.top_logprobs:
        return TokenOutput(token.id)
    return TokenOutput(token.id, token.logprob if token.HasField("logprob") else None,
                       tuple((a.id, a.logprob) for a in token.top_logprobs))
