"""Tools, tool choice and tool calls of the public protobuf messages ⇄ plain types, validated."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.common.errors import InvalidRequest
from splitserve.tokenizer.chat_tools import ChatMessage
from splitserve.tokenizer.output_parsing import collect_tool_calls
from splitserve.tokenizer.tool_choice import check_unique_names
from splitserve.tokenizer.types import FunctionDefinition, TextChunk, Tool, ToolCall, ToolChoice, ToolChoiceMode

_MODES = {pb.TOOL_CHOICE_MODE_UNSPECIFIED: ToolChoiceMode.AUTO, pb.TOOL_CHOICE_MODE_AUTO: ToolChoiceMode.AUTO,
          pb.TOOL_CHOICE_MODE_NONE: ToolChoiceMode.NONE, pb.TOOL_CHOICE_MODE_REQUIRED: ToolChoiceMode.REQUIRED}


def tools_from_pb(tools: Iterable[pb.Tool]) -> tuple[Tool, ...]:
    out = tuple(_tool_from_pb(t) for t in tools)
    check_unique_names(out)
    return out


def _tool_from_pb(tool: pb.Tool) -> Tool:
    if tool.type not in ("", "function"):
        raise InvalidRequest(f"tools: type {tool.type!r} is not supported; only \"function\"")
    function = tool.function
    if not function.name:
        raise InvalidRequest("tools: a function has no name")
    if function.parameters_json:
        try:
            parameters = json.loads(function.parameters_json)
        except json.JSONDecodeError as error:
            raise InvalidRequest(f"tools: parameters_json of {function.name!r} is not JSON: {error}") from error
        if not isinstance(parameters, dict):
            raise InvalidRequest(f"tools: parameters_json of {function.name!r} must be a JSON Schema object")
    return Tool(FunctionDefinition(function.name, function.description, function.parameters_json))


def tool_choice_from_pb(chat: pb.ChatInput | None) -> ToolChoice:
    """Unset or UNSPECIFIED is AUTO."""
    if chat is None or not chat.HasField("tool_choice"):
        return ToolChoice()
    choice = chat.tool_choice
    kind = choice.WhichOneof("choice")
    if kind == "function_name":
        if not choice.function_name:
            raise InvalidRequest("tool_choice: function_name is empty")
        return ToolChoice(ToolChoiceMode.FUNCTION, choice.function_name)
    if kind == "mode" and choice.mode not in _MODES:
        raise InvalidRequest(f"tool_choice: unknown mode {choice.mode}")
    return ToolChoice(_MODES[choice.mode] if kind == "mode" else ToolChoiceMode.AUTO)


def chat_messages_from_pb(messages: Iterable[pb.ChatMessage]) -> list[ChatMessage]:
    return [ChatMessage(m.role, m.content, tuple(ToolCall(c.id, c.function.name, c.function.arguments,
                                                          c.type or "function") for c in m.tool_calls),
                        m.tool_call_id, m.name) for m in messages]


def tool_calls_to_pb(chunks: Sequence[TextChunk]) -> list[pb.ToolCall]:
    """A finished stream's tool calls, whole (a void call left out)."""
    return [pb.ToolCall(id=c.id, type=c.type, function=pb.FunctionCall(name=c.name, arguments=c.arguments))
            for c in collect_tool_calls(chunks)]
