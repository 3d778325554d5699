"""OpenAI request bodies → the tier's plain types (TextInput, then TextRequest once tokenized)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from splitserve.link.types import EngineInfo, GenerationRequest, SamplingParams
from splitserve.tokenizer.config import TokenizerConfig
from splitserve.tokenizer.http import schema
from splitserve.tokenizer.http.errors import InvalidField, from_validation
from splitserve.tokenizer.pb_convert import check_stops
from splitserve.tokenizer.text_codec import ChatMessage
from splitserve.tokenizer.text_input import TextInput
from splitserve.tokenizer.types import TextRequest

OPENAI_DEFAULT_TEMPERATURE = 1.0  # OpenAI samples unless told otherwise; temperature 0 is greedy
NOT_YET = "is not supported yet"
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Plan:
    """One OpenAI request, converted: what to generate and how to shape the answer."""

    chat: bool  # chat.completion(.chunk) or text_completion
    model: str
    text_input: TextInput
    stream: bool
    include_usage: bool
    logprobs: bool
    top_logprobs: int
    user: str | None
    body: schema.SamplingFields

    def check_engine(self, info: EngineInfo) -> None:
        """Refuses, by its OpenAI name, a field the pool's engine cannot honour (the generator would refuse it
        too, by the gRPC API's name)."""
        b, caps = self.body, info.capabilities
        sampled = b.temperature is None or b.temperature > 0  # unset is OpenAI's 1.0
        unmet = [("repetition_penalty", b.repetition_penalty not in (None, 1.0) and not caps.repetition_penalty),
                 ("presence_penalty", bool(b.presence_penalty) and not caps.presence_penalty),
                 ("frequency_penalty", bool(b.frequency_penalty) and not caps.frequency_penalty),
                 ("min_p", bool(b.min_p) and not caps.min_p),
                 ("seed", b.seed is not None and sampled and not caps.seed),
                 ("min_tokens", b.min_tokens > 0 and not caps.min_new_tokens),
                 ("logprobs", self.logprobs and not caps.logprobs),
                 ("top_logprobs", self.top_logprobs > caps.max_top_logprobs)]
        for name, refused in unmet:
            if refused:
                raise InvalidField(name, f"engine {info.engine_label} cannot honour {name}"
                                   + (f" above {caps.max_top_logprobs}" if name == "top_logprobs" else ""))

    def text_request(self, request_id: str, prompt_ids: list[int], config: TokenizerConfig) -> TextRequest:
        """The pipeline's request, built once the prompt is tokenized."""
        b = self.body
        stops = [b.stop] if isinstance(b.stop, str) else list(b.stop or ())
        check_stops(stops, config)
        generation = GenerationRequest(
            request_id=request_id, prompt_token_ids=prompt_ids, sampling=_sampling(b),
            max_new_tokens=_max_tokens(b), min_new_tokens=b.min_tokens, ignore_eos=b.ignore_eos,
            logprobs=self.logprobs, top_logprobs=self.top_logprobs,
            min_message_interval_ms=round(config.stream_interval_ms))
        return TextRequest(generation=generation, stop=tuple(stops), include_tokens=self.logprobs)


def parse(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        raise from_validation(error) from None


def chat_plan(body: bytes) -> Plan:
    req = parse(schema.ChatCompletionRequest, body)
    _refuse_unserved(req)
    _refuse_tools(req)
    if req.top_logprobs and not req.logprobs:
        raise InvalidField("top_logprobs", "top_logprobs needs logprobs=true")
    messages = tuple(ChatMessage(m.role, _content(m)) for m in req.messages)
    return _plan(req, True, TextInput(chat=messages), req.logprobs, req.top_logprobs or 0)


def completion_plan(body: bytes) -> Plan:
    req = parse(schema.CompletionRequest, body)
    _refuse_unserved(req)
    if req.echo or req.suffix or req.best_of not in (None, 1):
        name = "echo" if req.echo else "suffix" if req.suffix else "best_of"
        raise InvalidField(name, f"{name} {NOT_YET}")
    logprobs = req.logprobs is not None
    return _plan(req, False, _prompt_input(req.prompt), logprobs, req.logprobs or 0)


def _plan(req: schema.SamplingFields, chat: bool, text_input: TextInput, logprobs: bool, top: int) -> Plan:
    if req.stream_options is not None and not req.stream:
        raise InvalidField("stream_options", "stream_options needs stream=true")
    include_usage = req.stream_options is not None and req.stream_options.include_usage
    return Plan(chat, req.model, text_input, req.stream, include_usage, logprobs, top, req.user, req)


def _refuse_unserved(req: schema.SamplingFields) -> None:
    if req.n != 1:
        raise InvalidField("n", f"n={req.n}: more than one choice per request {NOT_YET}; send n=1")
    if req.logit_bias:
        raise InvalidField("logit_bias", f"logit_bias {NOT_YET}")
    if req.top_k is not None and req.top_k < -1:
        raise InvalidField("top_k", f"top_k must be -1 or 0 (off) or positive, got {req.top_k}")


def _refuse_tools(req: schema.ChatCompletionRequest) -> None:
    for name in ("tools", "functions", "function_call", "parallel_tool_calls"):
        if getattr(req, name):
            raise InvalidField(name, f"{name}: tool and function calling {NOT_YET}")
    if req.tool_choice not in (None, "none"):
        raise InvalidField("tool_choice", f"tool_choice: tool calling {NOT_YET}")
    if req.response_format is not None and req.response_format.get("type", "text") != "text":
        raise InvalidField("response_format", f"response_format {req.response_format.get('type')!r} {NOT_YET}; "
                                              "only plain text is produced")


def _content(message: schema.Message) -> str:
    if isinstance(message.content, str):
        return message.content
    return "".join(part.text for part in message.content)


def _prompt_input(prompt: str | list[str] | list[int] | list[list[int]]) -> TextInput:
    if isinstance(prompt, str):
        return TextInput(prompt=prompt)
    if prompt and all(isinstance(p, int) for p in prompt):
        return TextInput(token_ids=tuple(prompt))  # type: ignore[arg-type]
    if len(prompt) != 1:
        raise InvalidField("prompt", f"a batch of {len(prompt)} prompts {NOT_YET}; send one prompt per request")
    only: str | list[int] = prompt[0]  # type: ignore[assignment]  # not an int: checked above
    return _prompt_input(only)


def _max_tokens(b: schema.SamplingFields) -> int | None:
    new = getattr(b, "max_completion_tokens", None)
    if new is not None and b.max_tokens is not None and new != b.max_tokens:
        raise InvalidField("max_completion_tokens", "max_tokens and max_completion_tokens disagree; send one")
    return new if new is not None else b.max_tokens


def _sampling(b: schema.SamplingFields) -> SamplingParams:
    temperature = OPENAI_DEFAULT_TEMPERATURE if b.temperature is None else b.temperature
    return SamplingParams(
        temperature=temperature, top_k=b.top_k if b.top_k and b.top_k > 0 else None,
        top_p=None if b.top_p == 1 else b.top_p, repetition_penalty=b.repetition_penalty, seed=b.seed,
        min_p=b.min_p or None, presence_penalty=b.presence_penalty or None,
        frequency_penalty=b.frequency_penalty or None)


Planner = Callable[[bytes], Plan]
