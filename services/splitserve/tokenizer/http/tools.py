"""OpenAI's tools, tool_choice and tool-call history → the tier's plain types (as tool_pb does for gRPC)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from splitserve.common.errors import InvalidRequest
from splitserve.tokenizer.chat_tools import ChatMessage
from splitserve.tokenizer.http import schema
from splitserve.tokenizer.http.errors import InvalidField
from splitserve.tokenizer.tool_choice import check_unique_names
from splitserve.tokenizer.types import FunctionDefinition, Tool, ToolCall, ToolChoice, ToolChoiceMode

_MODES = {"auto": ToolChoiceMode.AUTO, "none": ToolChoiceMode.NONE, "required": ToolChoiceMode.REQUIRED}


def tools_of(specs: Sequence[schema.ToolSpec] | None) -> tuple[Tool, ...]:
    tools = tuple(Tool(FunctionDefinition(s.function.name, s.function.description,
                                          "" if s.function.parameters is None else json.dumps(s.function.parameters)))
                  for s in specs or ())
    try:
        check_unique_names(tools)
    except InvalidRequest as error:
        raise InvalidField("tools", error.message) from None
    return tools


def tool_choice_of(choice: str | schema.NamedToolChoice | None) -> ToolChoice:
    """Unset is `auto` (OpenAI's default when tools are given; without tools nothing is parsed anyway)."""
    if isinstance(choice, schema.NamedToolChoice):
        return ToolChoice(ToolChoiceMode.FUNCTION, choice.function.name)
    return ToolChoice(_MODES[choice or "auto"])


def check_parallel(parallel: bool | None, choice: ToolChoice) -> None:
    """`parallel_tool_calls: false` holds only where one call is all the answer can be (a forced call)."""
    if parallel is False and choice.mode not in (ToolChoiceMode.REQUIRED, ToolChoiceMode.FUNCTION):
        raise InvalidField("parallel_tool_calls", "parallel_tool_calls=false is only honoured with tool_choice "
                                                  "required or a named function (one forced call)")


def chat_messages_of(messages: Sequence[schema.Message]) -> tuple[ChatMessage, ...]:
    return tuple(_message(i, m) for i, m in enumerate(messages))


def _message(i: int, m: schema.Message) -> ChatMessage:
    calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments, c.type) for c in m.tool_calls or ())
    if calls and m.role != "assistant":
        raise InvalidField(f"messages.{i}.tool_calls", f"messages.{i}: only assistant messages have tool_calls")
    if m.content is None and not calls:
        raise InvalidField(f"messages.{i}.content", f"messages.{i}: content is required (it may be null only "
                                                    "beside an assistant's tool_calls)")
    if m.role == "tool" and not m.tool_call_id:
        raise InvalidField(f"messages.{i}.tool_call_id", f"messages.{i}: a tool message needs its tool_call_id")
    return ChatMessage(m.role, _content(m.content), calls, m.tool_call_id or "", m.name or "")


def _content(content: str | list[schema.TextPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.text for part in content)
