"""Tools and tool calls in chat templates, and the fallback for templates that do not render them.

A template renders tools natively when given `tools=` puts them in the prompt (Qwen2.5, Qwen3,
Llama 3.1, Hermes); it renders calls natively when an assistant message's `tool_calls` reach the
prompt. Otherwise (SmolLM2, for one) the Hermes convention is written into the messages: the tool
specs go into the system message inside `<tools>…</tools>` with how to answer with
`<tool_call>{"name": ..., "arguments": ...}</tool_call>`, an assistant's calls are appended to its
content in that form, and a tool result is wrapped in `<tool_response>…</tool_response>`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from splitserve.tokenizer.types import FunctionDefinition, Tool, ToolCall

_PROBE = "splitserve_probe_function"


@dataclass(frozen=True)
class ChatMessage:
    """One chat turn; an assistant turn may carry tool calls, a `tool` turn answers one."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    name: str = ""


def tool_dicts(tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """Tools as chat templates take them (OpenAI's shape, parameters as a JSON Schema object)."""
    return [{"type": t.type or "function",
             "function": {"name": t.function.name, "description": t.function.description,
                          "parameters": json.loads(t.function.parameters_json or "{}")}} for t in tools]


def message_dict(message: ChatMessage, content: str) -> dict[str, Any]:
    """A message as chat templates take it; call arguments as objects where they are JSON objects."""
    out: dict[str, Any] = {"role": message.role, "content": content}
    if message.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": c.type or "function",
                              "function": {"name": c.name, "arguments": _arguments(c.arguments)}}
                             for c in message.tool_calls]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.name:
        out["name"] = message.name
    return out


def _arguments(text: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, dict) else text


def call_text(call: ToolCall) -> str:
    """One call in the Hermes form."""
    return f'<tool_call>\n{{"name": {json.dumps(call.name)}, "arguments": {call.arguments or "{}"}}}\n</tool_call>'


def tools_system_text(tools: Sequence[Tool]) -> str:
    """The Hermes-style tool instructions for the system message."""
    specs = "\n".join(json.dumps(t) for t in tool_dicts(tools))
    return ("# Tools\n\nYou may call one or more of these functions to help with the request. Their "
            f"signatures are inside <tools></tools>:\n<tools>\n{specs}\n</tools>\n\nTo call a function, "
            "answer with a JSON object holding its name and arguments inside <tool_call></tool_call>, "
            'one per call:\n<tool_call>\n{"name": <function-name>, "arguments": <arguments-object>}\n</tool_call>')


def with_tools_in_system(messages: Sequence[ChatMessage], tools: Sequence[Tool]) -> list[ChatMessage]:
    """The fallback for tools: their instructions appended to the system message (one is added first)."""
    text = tools_system_text(tools)
    if messages and messages[0].role == "system":
        first = messages[0]
        return [replace(first, content=f"{first.content}\n\n{text}" if first.content else text), *messages[1:]]
    return [ChatMessage("system", text), *messages]


def with_calls_in_content(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The fallback for calls: assistant calls appended to the content, tool results wrapped."""
    out = []
    for m in messages:
        if m.tool_calls:
            calls = "\n".join(call_text(c) for c in m.tool_calls)
            m = replace(m, content=f"{m.content}\n{calls}" if m.content else calls, tool_calls=())
        elif m.role == "tool":
            m = replace(m, content=f"<tool_response>\n{m.content}\n</tool_response>")
        out.append(m)
    return out


def renders_tools(template: Any) -> bool:
    """Whether `template` (a tokenizer) puts `tools=` into the prompt."""
    probe = [Tool(function=FunctionDefinition(_PROBE, "probe", '{"type": "object", "properties": {}}'))]
    return _renders(template, [{"role": "user", "content": "hi"}], tool_dicts(probe))


def renders_tool_calls(template: Any) -> bool:
    """Whether `template` puts an assistant message's `tool_calls` into the prompt."""
    call = ChatMessage("assistant", "", (ToolCall("call_0", _PROBE, "{}"),))
    return _renders(template, [{"role": "user", "content": "hi"}, message_dict(call, "")], None)


def _renders(template: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> bool:
    try:
        return _PROBE in str(template.apply_chat_template(messages, tools=tools, tokenize=False))
    except Exception:  # a template that raises on these cannot render them
        return False

