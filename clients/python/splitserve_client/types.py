"""Plain types of the client API; protobuf stays inside the client."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

from splitserve.api.text.v1 import text_pb2 as pb


@dataclass(frozen=True)
class Tool:
    """A function the model may call; `parameters` is its JSON Schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})

    def to_pb(self) -> pb.Tool:
        return pb.Tool(type="function", function=pb.FunctionDefinition(
            name=self.name, description=self.description, parameters_json=json.dumps(self.parameters)))


@dataclass(frozen=True)
class Chat:
    """Chat input: (role, content) pairs rendered with the model's chat template, and the tools it may call.

    `tool_choice`: "auto" (default), "none", "required", or the name of one tool to call.
    """

    messages: list[tuple[str, str]]
    add_generation_prompt: bool = True
    tools: tuple[Tool, ...] = ()
    tool_choice: str = "auto"

    def to_pb(self) -> pb.ChatInput:
        chat = pb.ChatInput(messages=[pb.ChatMessage(role=r, content=c) for r, c in self.messages],
                            add_generation_prompt=self.add_generation_prompt, tools=[t.to_pb() for t in self.tools])
        modes = {"auto": pb.TOOL_CHOICE_MODE_AUTO, "none": pb.TOOL_CHOICE_MODE_NONE,
                 "required": pb.TOOL_CHOICE_MODE_REQUIRED}
        if self.tool_choice in modes:
            chat.tool_choice.mode = modes[self.tool_choice]
        else:
            chat.tool_choice.function_name = self.tool_choice
        return chat


@dataclass(frozen=True)
class ToolCall:
    """A tool call the model made: `arguments` is JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Constraint:
    """Structured output: set exactly one (the README's "Structured output" gives each one's syntax)."""

    json_schema: str | None = None  # a JSON Schema as JSON text
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] = ()
    grammar: str | None = None  # Lark (start rule `start`) or GBNF (root rule `root`)

    def to_pb(self) -> pb.Constraint:
        kinds = {"json_schema": self.json_schema is not None, "json_object": self.json_object,
                 "regex": self.regex is not None, "choice": bool(self.choice), "grammar": self.grammar is not None}
        chosen = [kind for kind, is_set in kinds.items() if is_set]
        if len(chosen) != 1:
            raise ValueError(f"a Constraint takes exactly one kind, got {chosen or 'none'}")
        if chosen[0] == "choice":
            return pb.Constraint(choice=pb.ChoiceList(choices=list(self.choice)))
        return pb.Constraint(**{chosen[0]: getattr(self, chosen[0])})


@dataclass(frozen=True)
class GenerationOptions:
    """Sampling and stopping options; None leaves the server default."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False
    request_id: str = ""
    model: str = ""
    constraint: Constraint | None = None
    n: int = 1  # completions of the prompt (each Delta has its index; Completion.choices has them all)
    best_of: int = 0  # > n: sample this many, return the n best by mean token logprob (generate only)
    separate_reasoning: bool = False  # the model's <think> text apart, in reasoning_text


@dataclass(frozen=True)
class Delta:
    """One streamed text delta; the last one has finish_reason set."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    stop_sequence: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    index: int = 0  # which completion, with n > 1
    reasoning_text: str = ""


@dataclass(frozen=True)
class Completion:
    """A whole completion."""

    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str
    stop_sequence: str
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0
    reasoning_text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    choices: list[Completion] = field(default_factory=list)  # with n > 1: every completion (this is choice 0)


Input = str | Chat | list[int]


def finish_name(value: int) -> str | None:
    if value == pb.FINISH_REASON_UNSPECIFIED:
        return None
    return pb.FinishReason.Name(value).removeprefix("FINISH_REASON_").lower()


AnyRequest = TypeVar("AnyRequest", pb.GenerateRequest, pb.GenerateStreamRequest)


def build_request(prompt: Input, options: GenerationOptions,
                  kind: type[AnyRequest] = pb.GenerateStreamRequest) -> AnyRequest:  # type: ignore[assignment]
    """The request message of either Generate RPC (`kind`: the two messages have the same fields)."""
    msg = kind(
        request_id=options.request_id, model=options.model,
        sampling=pb.SamplingParams(temperature=options.temperature, top_k=options.top_k, top_p=options.top_p,
                                   seed=options.seed, min_p=options.min_p, presence_penalty=options.presence_penalty,
                                   frequency_penalty=options.frequency_penalty),
        stopping=pb.StoppingCriteria(max_new_tokens=options.max_new_tokens, stop=options.stop,
                                     stop_token_ids=options.stop_token_ids, ignore_eos=options.ignore_eos),
        options=pb.ResponseOptions(include_tokens=True, logprobs=options.logprobs,
                                   separate_reasoning=options.separate_reasoning),
        n=options.n, best_of=options.best_of,
    )
    if options.constraint is not None:
        msg.constraint.CopyFrom(options.constraint.to_pb())
    if isinstance(prompt, str):
        msg.prompt = prompt
    elif isinstance(prompt, Chat):
        msg.chat.CopyFrom(prompt.to_pb())
    else:
        msg.token_ids.ids.extend(prompt)
    return msg


def delta_from_pb(msg: pb.GenerateStreamResponse) -> Delta:
    return Delta(msg.text, [t.id for t in msg.tokens], finish_name(msg.finish_reason), msg.stop_sequence,
                 msg.usage.prompt_tokens, msg.usage.completion_tokens, msg.usage.cached_prompt_tokens, msg.index,
                 msg.reasoning_text)


def completion_from_pb(msg: pb.GenerateResponse) -> Completion:
    return Completion(msg.request_id, msg.text, [t.id for t in msg.tokens], finish_name(msg.finish_reason) or "",
                      msg.stop_sequence, msg.usage.prompt_tokens, msg.usage.completion_tokens,
                      msg.usage.cached_prompt_tokens, msg.reasoning_text, _tool_calls(msg.tool_calls),
                      [_choice(msg.request_id, c) for c in msg.choices])


def _choice(request_id: str, msg: pb.Choice) -> Completion:
    return Completion(request_id, msg.text, [t.id for t in msg.tokens], finish_name(msg.finish_reason) or "",
                      msg.stop_sequence, msg.usage.prompt_tokens, msg.usage.completion_tokens,
                      msg.usage.cached_prompt_tokens, msg.reasoning_text, _tool_calls(msg.tool_calls))


def _tool_calls(calls: Any) -> list[ToolCall]:
    return [ToolCall(c.id, c.function.name, c.function.arguments) for c in calls]
