"""OpenAI request bodies → the tier's plain types (TextInput, then TextRequest once tokenized)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from splitserve.common.errors import InvalidRequest
from splitserve.link.types import Constraint, EngineInfo, GenerationRequest, SamplingParams
from splitserve.tokenizer.best_of import check_best_of
from splitserve.tokenizer.config import TokenizerConfig
from splitserve.tokenizer.http import schema
from splitserve.tokenizer.http.errors import InvalidField, from_validation
from splitserve.tokenizer.http.structured import FORCED_CALL_FIELD, NamedConstraint, request_constraint
from splitserve.tokenizer.http.tools import chat_messages_of, check_parallel, tool_choice_of, tools_of
from splitserve.tokenizer.pb_convert import check_stops
from splitserve.tokenizer.samples import check_n
from splitserve.tokenizer.text_input import TextInput
from splitserve.tokenizer.tool_choice import forced_call_constraint, output_parsing
from splitserve.tokenizer.types import OutputParsing, TextRequest, Tool, ToolChoice, ToolChoiceMode

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
    constraint: NamedConstraint | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    separate_reasoning: bool = False
    best_of: int = 0  # completions only: > n, the n best of this many

    def check_engine(self, info: EngineInfo) -> None:
        """Refuses, by its OpenAI name, a field the pool's engine cannot honour (the generator would refuse it
        too, by the gRPC API's name)."""
        b, caps = self.body, info.capabilities
        sampled = b.temperature is None or b.temperature > 0  # unset is OpenAI's 1.0
        unmet = [("repetition_penalty", b.repetition_penalty not in (None, 1.0) and not caps.repetition_penalty, ""),
                 ("presence_penalty", bool(b.presence_penalty) and not caps.presence_penalty, ""),
                 ("frequency_penalty", bool(b.frequency_penalty) and not caps.frequency_penalty, ""),
                 ("min_p", bool(b.min_p) and not caps.min_p, ""),
                 ("seed", b.seed is not None and sampled and not caps.seed, ""),
                 ("min_tokens", b.min_tokens > 0 and not caps.min_new_tokens, ""),
                 ("logprobs", self.logprobs and not caps.logprobs, ""),
                 ("top_logprobs", self.top_logprobs > caps.max_top_logprobs, f" above {caps.max_top_logprobs}")]
        if self.constraint is not None:
            unmet.append((self.constraint.field, not caps.constrained_decoding, " (no constrained decoding)"))
        unmet.append(("best_of", self.best_of > 0 and not caps.logprobs, " (no logprobs to rank by)"))
        for name, refused, detail in unmet:
            if refused:
                raise InvalidField(name, f"engine {info.engine_label} cannot honour {name}{detail}")

    def parsing(self, tool_call_parser: str, reasoning_parser: str) -> OutputParsing:
        """The output parsers this request runs with the server's; a 400 naming the field they cannot serve."""
        try:
            return output_parsing(self.tools, self.tool_choice, self.separate_reasoning, tool_call_parser,
                                  reasoning_parser)
        except InvalidRequest as error:
            name = "separate_reasoning" if self.separate_reasoning and reasoning_parser == "none" else "tools"
            raise InvalidField(name, error.message) from None

    def text_request(self, request_id: str, prompt_ids: list[int], config: TokenizerConfig,
                     tool_call_parser: str = "none") -> TextRequest:
        """The pipeline's request, built once the prompt is tokenized; `tool_call_parser` is the server's."""
        b = self.body
        stops = [b.stop] if isinstance(b.stop, str) else list(b.stop or ())
        check_stops(stops, config)
        generation = GenerationRequest(
            request_id=request_id, prompt_token_ids=prompt_ids, sampling=_sampling(b),
            max_new_tokens=_max_tokens(b), min_new_tokens=b.min_tokens, ignore_eos=b.ignore_eos,
            logprobs=self.logprobs, top_logprobs=self.top_logprobs,
            min_message_interval_ms=round(config.stream_interval_ms),
            constraint=None if self.constraint is None else self.constraint.constraint)
        return TextRequest(generation=generation, stop=tuple(stops), include_tokens=self.logprobs,
                           parsing=self.parsing(tool_call_parser, config.reasoning_parser), n=b.n,
                           best_of=self.best_of)


def parse(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        raise from_validation(error) from None


def chat_plan(body: bytes) -> Plan:
    req = parse(schema.ChatCompletionRequest, body)
    _refuse_unserved(req)
    _refuse_functions(req)
    if req.top_logprobs and not req.logprobs:
        raise InvalidField("top_logprobs", "top_logprobs needs logprobs=true")
    tools, choice = tools_of(req.tools), tool_choice_of(req.tool_choice)
    check_parallel(req.parallel_tool_calls, choice)
    shown = () if choice.mode is ToolChoiceMode.NONE else tools  # as gRPC: none neither renders nor parses
    text_input = TextInput(chat=chat_messages_of(req.messages), tools=shown)
    plan = _plan(req, True, text_input, req.logprobs, req.top_logprobs or 0, _forced_call(tools, choice))
    return replace(plan, tools=tools, tool_choice=choice, separate_reasoning=req.separate_reasoning)


def completion_plan(body: bytes) -> Plan:
    req = parse(schema.CompletionRequest, body)
    _refuse_unserved(req)
    if req.echo or req.suffix:
        name = "echo" if req.echo else "suffix"
        raise InvalidField(name, f"{name} {NOT_YET}")
    logprobs = req.logprobs is not None
    plan = _plan(req, False, _prompt_input(req.prompt), logprobs, req.logprobs or 0, None)
    return replace(plan, best_of=_best_of(req))


def _best_of(req: schema.CompletionRequest) -> int:
    try:
        best_of = check_best_of(req.best_of or 0, req.n)
    except InvalidRequest as error:
        raise InvalidField("best_of", error.message) from None
    if best_of and req.stream:
        raise InvalidField("best_of", f"best_of={best_of} cannot be used with stream=true (the best are known "
                                      "only when all have finished)")
    return best_of


def _plan(req: schema.SamplingFields, chat: bool, text_input: TextInput, logprobs: bool, top: int,
          forced_call: Constraint | None) -> Plan:
    if req.stream_options is not None and not req.stream:
        raise InvalidField("stream_options", "stream_options needs stream=true")
    include_usage = req.stream_options is not None and req.stream_options.include_usage
    constraint = request_constraint(req, forced_call)
    if constraint is not None:
        _check_constrainable(req, constraint.field)
    return Plan(chat, req.model, text_input, req.stream, include_usage, logprobs, top, req.user, req, constraint)


def _forced_call(tools: tuple[Tool, ...], choice: ToolChoice) -> Constraint | None:
    try:
        return forced_call_constraint(tools, choice)
    except InvalidRequest as error:
        raise InvalidField(FORCED_CALL_FIELD, error.message) from None


def _check_constrainable(req: schema.SamplingFields, field_name: str) -> None:
    """What the generator refuses beside a constraint, refused here by the OpenAI names."""
    for name, set_ in (("ignore_eos", req.ignore_eos), ("min_tokens", req.min_tokens > 0)):
        if set_:
            raise InvalidField(name, f"{name} cannot be combined with {field_name}: the constraint decides "
                                     "where the answer ends")


def _refuse_unserved(req: schema.SamplingFields) -> None:
    if req.n < 1:
        raise InvalidField("n", f"n must be at least 1, got {req.n}")
    try:
        check_n(req.n)
    except InvalidRequest as error:
        raise InvalidField("n", error.message) from None
    if req.logit_bias:
        raise InvalidField("logit_bias", f"logit_bias {NOT_YET}")
    if req.top_k is not None and req.top_k < -1:
        raise InvalidField("top_k", f"top_k must be -1 or 0 (off) or positive, got {req.top_k}")


def _refuse_functions(req: schema.ChatCompletionRequest) -> None:
    for name in ("functions", "function_call"):
        if getattr(req, name):
            raise InvalidField(name, f"{name}: the deprecated function calling is not supported; send tools "
                                     "and tool_choice")


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
