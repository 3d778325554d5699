"""The token API's protobuf messages ⇄ the link's plain types, both ways (generator servicer, tokenizer client)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from splitserve.api.tokens.v1 import tokens_pb2 as pb
from splitserve.common.errors import RequestError
from splitserve.link.errors import code_number, error_from_number
from splitserve.link.types import (
    Constraint,
    ConstraintKind,
    EngineCapabilities,
    EngineInfo,
    EngineLoad,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    GeneratorInfo,
    SamplingParams,
    TokenOutput,
)

GENERATOR_TIER = "generator tier"  # how the tokenizer tier names errors its generators answered

_FINISH = {
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.EOS_TOKEN: pb.FINISH_REASON_EOS_TOKEN,
    FinishReason.STOP_TOKEN: pb.FINISH_REASON_STOP_TOKEN,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
}
_FINISH_FROM_PB = {value: reason for reason, value in _FINISH.items()}

# -- requests -----------------------------------------------------------------------------------------


def sampling_to_pb(s: SamplingParams) -> pb.SamplingParams:
    """None leaves a field unset (protobuf skips None in constructors)."""
    return pb.SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                             repetition_penalty=s.repetition_penalty, seed=s.seed, min_p=s.min_p,
                             presence_penalty=s.presence_penalty, frequency_penalty=s.frequency_penalty)


class OptionalFields(Protocol):
    """A protobuf message whose fields are proto3 `optional` scalars (both APIs' SamplingParams)."""

    def HasField(self, field_name: str) -> bool: ...  # protobuf's name


def sampling_from_pb(s: OptionalFields) -> SamplingParams:
    """Either API's SamplingParams (the same optional fields, by name) as the plain type; unset is None."""
    return SamplingParams(**{f.name: getattr(s, f.name) if s.HasField(f.name) else None
                             for f in dataclasses.fields(SamplingParams)})


class ConstraintMessage(Protocol):
    """Either API's Constraint message (the same oneof `kind`, by name)."""

    json_schema: str
    json_object: bool
    regex: str
    grammar: str

    @property
    def choice(self) -> ChoiceMessage: ...

    def WhichOneof(self, oneof_group: str) -> str | None: ...  # protobuf's name


class ChoiceMessage(Protocol):
    @property
    def choices(self) -> Sequence[str]: ...


def constraint_from_pb(msg: ConstraintMessage) -> Constraint | None:
    """Either API's Constraint as the plain type; None when no kind is set (or json_object is false)."""
    kind = msg.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "choice":
        return Constraint(ConstraintKind.CHOICE, choices=tuple(msg.choice.choices))
    if kind == "json_object":
        return Constraint(ConstraintKind.JSON_OBJECT) if msg.json_object else None
    return Constraint(ConstraintKind(kind), spec=getattr(msg, kind))


def constraint_to_pb(constraint: Constraint | None) -> pb.Constraint | None:
    if constraint is None:
        return None
    kind = constraint.kind
    if kind is ConstraintKind.CHOICE:
        return pb.Constraint(choice=pb.ChoiceList(choices=list(constraint.choices)))
    if kind is ConstraintKind.JSON_OBJECT:
        return pb.Constraint(json_object=True)
    if kind is ConstraintKind.JSON_SCHEMA:
        return pb.Constraint(json_schema=constraint.spec)
    if kind is ConstraintKind.REGEX:
        return pb.Constraint(regex=constraint.spec)
    return pb.Constraint(grammar=constraint.spec)


def request_to_pb(request: GenerationRequest) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=request.request_id, prompt_token_ids=request.prompt_token_ids,
        sampling=sampling_to_pb(request.sampling),
        max_new_tokens=request.max_new_tokens, min_new_tokens=request.min_new_tokens,
        stop_token_ids=list(request.stop_token_ids), ignore_eos=request.ignore_eos,
        logprobs=request.logprobs, top_logprobs=request.top_logprobs,
        min_message_interval_ms=request.min_message_interval_ms,
        constraint=constraint_to_pb(request.constraint),
    )


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
        min_message_interval_ms=msg.min_message_interval_ms,
        constraint=constraint_from_pb(msg.constraint) if msg.HasField("constraint") else None,
    )


# -- outputs (run once per message on both tiers: the common case, no logprobs, takes the short path) --


def chunk_to_pb(chunk: GenerationChunk) -> pb.GenerateResponse:
    msg = pb.GenerateResponse()
    fill_response(msg, chunk)
    return msg


def fill_response(msg: pb.GenerateResponse, chunk: GenerationChunk) -> None:
    """Fills `msg` in place (building a message and copying it into its parent would cost twice)."""
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


def chunk_from_pb(msg: pb.GenerateResponse) -> GenerationChunk:
    tokens = [_token_from_pb(t) for t in msg.tokens]
    if msg.finish_reason == pb.FINISH_REASON_UNSPECIFIED:
        return GenerationChunk(tokens)
    return GenerationChunk(
        tokens, _FINISH_FROM_PB[msg.finish_reason], msg.stop_token_id if msg.HasField("stop_token_id") else None,
        msg.prompt_tokens, msg.completion_tokens, msg.seed if msg.HasField("seed") else None,
        msg.cached_prompt_tokens,
    )


def _token_from_pb(token: pb.Token) -> TokenOutput:
    if not token.HasField("logprob") and not token.top_logprobs:
        return TokenOutput(token.id)
    return TokenOutput(token.id, token.logprob if token.HasField("logprob") else None,
                       tuple((a.id, a.logprob) for a in token.top_logprobs))


# -- GenerateMany -------------------------------------------------------------------------------------


def outputs_to_pb(items: Sequence[tuple[int, GenerationChunk | RequestError]]) -> pb.GenerateManyResponse:
    """One message carrying every stream's outputs, each delta filled in place."""
    msg = pb.GenerateManyResponse()
    add = msg.deltas.add
    for stream_id, item in items:
        delta = add(stream_id=stream_id)
        if isinstance(item, RequestError):
            delta.error.code, delta.error.message = code_number(item.code_name), item.message
        else:
            fill_response(delta.response, item)
    return msg


def delta_from_pb(delta: pb.RequestDelta) -> GenerationChunk | RequestError:
    if delta.HasField("error"):
        return error_from_number(delta.error.code, delta.error.message, GENERATOR_TIER)
    return chunk_from_pb(delta.response)


# -- model info and load ------------------------------------------------------------------------------


def capabilities_to_pb(caps: EngineCapabilities) -> pb.EngineCapabilities:
    return pb.EngineCapabilities(
        seed=caps.seed, repetition_penalty=caps.repetition_penalty, min_new_tokens=caps.min_new_tokens,
        max_top_logprobs=caps.max_top_logprobs, logprobs=caps.logprobs, presence_penalty=caps.presence_penalty,
        frequency_penalty=caps.frequency_penalty, min_p=caps.min_p, constrained_decoding=caps.constrained_decoding)


def capabilities_from_pb(caps: pb.EngineCapabilities) -> EngineCapabilities:
    return EngineCapabilities(
        seed=caps.seed, repetition_penalty=caps.repetition_penalty, min_new_tokens=caps.min_new_tokens,
        logprobs=caps.logprobs, max_top_logprobs=caps.max_top_logprobs, presence_penalty=caps.presence_penalty,
        frequency_penalty=caps.frequency_penalty, min_p=caps.min_p, constrained_decoding=caps.constrained_decoding)


def info_to_pb(info: GeneratorInfo) -> pb.GetModelInfoResponse:
    e = info.engine_info
    return pb.GetModelInfoResponse(
        model=e.model_name, engine=e.engine, vocab_size=e.vocab_size, eos_token_ids=list(e.eos_token_ids),
        max_input_tokens=e.max_input_tokens, max_total_tokens=e.max_total_tokens, max_new_tokens=e.max_new_tokens,
        default_max_new_tokens=e.default_max_new_tokens, max_batch_size=e.max_batch_size,
        tokenizer_fingerprint=info.tokenizer_fingerprint, capabilities=capabilities_to_pb(e.capabilities))


def info_from_pb(msg: pb.GetModelInfoResponse) -> GeneratorInfo:
    engine_info = EngineInfo(
        model_name=msg.model, engine=msg.engine, vocab_size=msg.vocab_size, eos_token_ids=tuple(msg.eos_token_ids),
        max_input_tokens=msg.max_input_tokens, max_total_tokens=msg.max_total_tokens,
        max_new_tokens=msg.max_new_tokens, default_max_new_tokens=msg.default_max_new_tokens,
        max_batch_size=msg.max_batch_size, capabilities=capabilities_from_pb(msg.capabilities))
    return GeneratorInfo(engine_info, msg.tokenizer_fingerprint)


def load_to_pb(load: EngineLoad) -> pb.GetLoadResponse:
    return pb.GetLoadResponse(queued_requests=load.queued_requests, running_requests=load.running_requests,
                              cache_utilization=load.cache_utilization, max_batch_size=load.max_batch_size)


def load_from_pb(msg: pb.GetLoadResponse) -> EngineLoad:
    return EngineLoad(msg.queued_requests, msg.running_requests, msg.cache_utilization, msg.max_batch_size)
