"""Public protobuf messages ⇄ the tokenizer tier's plain types (the only place both meet)."""

from __future__ import annotations

import uuid
from typing import Any

from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.common.errors import InvalidRequest
from splitserve.link.convert import constraint_from_pb, sampling_from_pb
from splitserve.link.types import Constraint, GenerationRequest
from splitserve.tokenizer.best_of import check_best_of
from splitserve.tokenizer.config import TokenizerConfig
from splitserve.tokenizer.samples import by_completion, check_n
from splitserve.tokenizer.text_codec import TextCodec
from splitserve.tokenizer.text_input import TextInput
from splitserve.tokenizer.tool_choice import forced_call_constraint, output_parsing
from splitserve.tokenizer.tool_pb import chat_messages_from_pb, tool_calls_to_pb, tool_choice_from_pb, tools_from_pb
from splitserve.tokenizer.types import TextChunk, TextFinishReason, TextRequest, ToolChoiceMode

AnyGenerateRequest = pb.GenerateRequest | pb.GenerateStreamRequest

_FINISH = {
    TextFinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    TextFinishReason.EOS_TOKEN: pb.FINISH_REASON_EOS_TOKEN,
    TextFinishReason.STOP_SEQUENCE: pb.FINISH_REASON_STOP_SEQUENCE,
    TextFinishReason.STOP_TOKEN: pb.FINISH_REASON_STOP_TOKEN,
    TextFinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
    TextFinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
}


def request_id_of(msg: AnyGenerateRequest) -> str:
    return msg.request_id or uuid.uuid4().hex


def input_of(msg: AnyGenerateRequest | pb.TokenizeRequest) -> TextInput:
    """The request's input as the plain type both APIs tokenize."""
    kind = msg.WhichOneof("input")
    if kind in ("prompt", "text"):
        add_special = isinstance(msg, pb.TokenizeRequest) and msg.add_special_tokens
        return TextInput(prompt=getattr(msg, kind), add_special_tokens=add_special)
    if kind == "chat":
        chat = msg.chat
        tools = tools_from_pb(chat.tools)
        shown = () if tool_choice_from_pb(chat).mode is ToolChoiceMode.NONE else tuple(tools)
        return TextInput(chat=tuple(chat_messages_from_pb(chat.messages)), tools=shown,
                         add_generation_prompt=chat.add_generation_prompt if chat.HasField("add_generation_prompt")
                         else True, allow_special_tokens_in_content=chat.allow_special_tokens_in_content)
    if kind == "token_ids":
        return TextInput(token_ids=tuple(msg.token_ids.ids))  # type: ignore[union-attr]
    return TextInput()


def check_stops(stops: list[str], config: TokenizerConfig) -> None:
    if len(stops) > config.max_stop_sequences:
        raise InvalidRequest(f"{len(stops)} stop sequences, over the limit max_stop_sequences="
                             f"{config.max_stop_sequences}")
    for stop in stops:
        if not stop or len(stop) > config.max_stop_sequence_length:
            raise InvalidRequest(f"stop sequence of length {len(stop)} is outside 1..max_stop_sequence_length="
                                 f"{config.max_stop_sequence_length}")


def _constraint(msg: AnyGenerateRequest, forced_call: Constraint | None) -> Constraint | None:
    """The request's own constraint, or the one a forced tool call (tool_choice required / named) brings."""
    own = constraint_from_pb(msg.constraint) if msg.HasField("constraint") else None
    if own is not None and forced_call is not None:
        raise InvalidRequest("a constraint and a forced tool call (tool_choice required or a named function) "
                             "cannot both be given: the call's schema is the constraint")
    return own or forced_call


def text_request_from_pb(msg: AnyGenerateRequest, request_id: str, prompt_ids: list[int],
                         config: TokenizerConfig, tool_call_parser: str = "none") -> TextRequest:
    """The request for the pipeline; `tool_call_parser` is the server's, resolved for its model."""
    stopping, options = msg.stopping, msg.options
    stops = list(stopping.stop)
    check_stops(stops, config)
    is_chat = msg.WhichOneof("input") == "chat"
    tools = tools_from_pb(msg.chat.tools) if is_chat else ()
    choice = tool_choice_from_pb(msg.chat) if is_chat else tool_choice_from_pb(None)
    constraint = _constraint(msg, forced_call_constraint(tools, choice))
    parsing = output_parsing(tools, choice, options.separate_reasoning, tool_call_parser, config.reasoning_parser)
    generation = GenerationRequest(
        request_id=request_id, prompt_token_ids=prompt_ids, sampling=sampling_from_pb(msg.sampling),
        max_new_tokens=stopping.max_new_tokens if stopping.HasField("max_new_tokens") else None,
        min_new_tokens=stopping.min_new_tokens, stop_token_ids=tuple(stopping.stop_token_ids),
        ignore_eos=stopping.ignore_eos, logprobs=options.logprobs or options.top_logprobs > 0,
        top_logprobs=options.top_logprobs,
        min_message_interval_ms=round(config.stream_interval_ms),  # the generator holds tokens that long
        # Passed through as data: the generator compiles it against its tokenizer (the fingerprint check
        # guarantees it is this tier's tokenizer too).
        constraint=constraint,
    )
    n = check_n(msg.n)
    return TextRequest(
        generation=generation, stop=tuple(stops),
        include_tokens=options.include_tokens or options.logprobs or options.top_logprobs > 0,
        skip_special_tokens=options.skip_special_tokens if options.HasField("skip_special_tokens") else True,
        parsing=parsing, n=n, best_of=_best_of(msg, n),
    )


def _best_of(msg: AnyGenerateRequest, n: int) -> int:
    best_of = check_best_of(msg.best_of, n)
    if best_of and isinstance(msg, pb.GenerateStreamRequest):
        raise InvalidRequest(f"best_of={best_of} cannot be streamed (the best are known only when all "
                             "have finished): use Generate")
    return best_of


def tokens_to_pb(chunk: TextChunk, codec: TextCodec) -> list[pb.Token]:
    return [
        pb.Token(id=t.token_id, text=t.text, logprob=t.logprob,
                 top_logprobs=[pb.TopLogprob(id=i, text=codec.decode([i], False), logprob=lp)
                               for i, lp in t.top_logprobs])
        for t in chunk.tokens
    ]


def stream_response(chunk: TextChunk, request_id: str, codec: TextCodec) -> pb.GenerateStreamResponse:
    msg = pb.GenerateStreamResponse(request_id=request_id, text=chunk.text, tokens=tokens_to_pb(chunk, codec),
                                    reasoning_text=chunk.reasoning, index=chunk.index)
    if chunk.tool_calls:
        msg.tool_calls.extend(pb.ToolCallDelta(index=d.index, id=d.id, name=d.name, arguments=d.arguments)
                              for d in chunk.tool_calls)
    if chunk.finish_reason is not None:
        msg.stop_sequence = chunk.stop_sequence
        msg.tool_parse_error = chunk.tool_parse_error
        msg.usage.CopyFrom(_usage(chunk))
        _set_finish(msg, chunk)
    return msg


def _usage(chunk: TextChunk) -> pb.Usage:
    return pb.Usage(prompt_tokens=chunk.prompt_tokens, completion_tokens=chunk.completion_tokens,
                    cached_prompt_tokens=chunk.cached_prompt_tokens)


def _set_finish(msg: pb.GenerateResponse | pb.Choice | pb.GenerateStreamResponse, last: TextChunk) -> None:
    if last.finish_reason is not None:
        msg.finish_reason = _FINISH[last.finish_reason]
    if last.seed is not None:
        msg.seed = last.seed
    if last.stop_token_id is not None:
        msg.stop_token_id = last.stop_token_id


def unary_response(chunks: list[TextChunk], request_id: str, model: str, codec: TextCodec) -> pb.GenerateResponse:
    """A finished stream's chunks as one response; with n > 1, choice 0 on top and every choice in `choices`."""
    by_index = by_completion(chunks)
    msg = pb.GenerateResponse(request_id=request_id, model=model, **_completion(by_index[0], codec))
    _set_finish(msg, by_index[0][-1])
    if len(by_index) > 1:  # the prompt once, every completion's tokens
        for index, completion in by_index.items():
            choice = msg.choices.add(index=index, **_completion(completion, codec))
            _set_finish(choice, completion[-1])
        msg.usage.completion_tokens = sum(c.usage.completion_tokens for c in msg.choices)
        msg.usage.cached_prompt_tokens = sum(c.usage.cached_prompt_tokens for c in msg.choices)
    return msg


def _completion(chunks: list[TextChunk], codec: TextCodec) -> dict[str, Any]:
    """The fields GenerateResponse and Choice share, for one completion's chunks."""
    last = chunks[-1]
    return {"text": "".join(c.text for c in chunks), "tokens": [t for c in chunks for t in tokens_to_pb(c, codec)],
            "stop_sequence": last.stop_sequence, "usage": _usage(last),
            "reasoning_text": "".join(c.reasoning for c in chunks), "tool_calls": tool_calls_to_pb(chunks),
            "tool_parse_error": last.tool_parse_error}
