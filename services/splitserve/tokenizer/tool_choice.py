"""What a request's tools and tool choice ask of the output: parsers to run, or a forced call.

`required` and a named function are enforced by constrained decoding: the answer is then one
bare JSON object `{"name": ..., "arguments": {...}}` matching `forced_call_schema`, read by the
`llama3_json` parser (which takes "arguments" as well as "parameters").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from splitserve.common.errors import InvalidRequest
from splitserve.link.types import Constraint, ConstraintKind
from splitserve.tokenizer.types import OutputParsing, Tool, ToolChoice, ToolChoiceMode

FORCED_CALL_PARSER = "llama3_json"


def check_unique_names(tools: Sequence[Tool]) -> None:
    """Refuses tools whose function names repeat (a call names its function)."""
    names = [t.function.name for t in tools]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise InvalidRequest(f"tools: function names must be unique; repeated: {', '.join(duplicated)}")


def call_schema(tool: Tool) -> dict[str, Any]:
    """The JSON Schema of one call of `tool`: its name, then arguments matching its parameters."""
    parameters = json.loads(tool.function.parameters_json) if tool.function.parameters_json else {"type": "object"}
    return {"type": "object",
            "properties": {"name": {"const": tool.function.name}, "arguments": parameters},
            "required": ["name", "arguments"], "additionalProperties": False}


def forced_call_schema(tools: Sequence[Tool], choice: ToolChoice) -> dict[str, Any] | None:
    """The schema a forced call must match: `required`, any of the tools; a named function, that one."""
    if choice.mode is ToolChoiceMode.REQUIRED:
        if not tools:
            raise InvalidRequest("tool_choice required needs at least one tool")
        schemas = [call_schema(t) for t in tools]
        return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    if choice.mode is ToolChoiceMode.FUNCTION:
        named = [t for t in tools if t.function.name == choice.function_name]
        if not named:
            raise InvalidRequest(f"tool_choice names function {choice.function_name!r}, which is not in tools")
        return call_schema(named[0])
    return None


def forced_call_constraint(tools: Sequence[Tool], choice: ToolChoice) -> Constraint | None:
    """The constraint that holds the generator to a forced call; None when no call is forced.

    An engine without constrained decoding refuses it (INVALID_ARGUMENT naming the engine).
    """
    schema = forced_call_schema(tools, choice)
    return None if schema is None else Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(schema))


def output_parsing(tools: Sequence[Tool], choice: ToolChoice, separate_reasoning: bool,
                   tool_call_parser: str, reasoning_parser: str) -> OutputParsing:
    """The parsers a request runs, given the server's (`none`: off); refuses what cannot be honoured."""
    if separate_reasoning and reasoning_parser == "none":
        raise InvalidRequest("separate_reasoning needs a reasoning parser; this server runs --reasoning-parser none")
    reasoning = reasoning_parser if separate_reasoning else "none"
    if not tools or choice.mode is ToolChoiceMode.NONE:
        return OutputParsing("none", reasoning)
    if choice.mode in (ToolChoiceMode.REQUIRED, ToolChoiceMode.FUNCTION):
        return OutputParsing(FORCED_CALL_PARSER, reasoning)  # the call is a bare object under the schema
    if tool_call_parser == "none":
        raise InvalidRequest("tools need a tool-call parser; this server runs --tool-call-parser none")
    return OutputParsing(tool_call_parser, reasoning)
