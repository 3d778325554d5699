"""Tool choice: the schema a forced call must match, and which parsers a request runs."""

from __future__ import annotations

import json

import pytest

from splitserve.common.errors import InvalidRequest
from splitserve.link.types import ConstraintKind
from splitserve.tokenizer.tool_choice import forced_call_constraint, forced_call_schema, output_parsing
from splitserve.tokenizer.types import FunctionDefinition, OutputParsing, Tool, ToolChoice, ToolChoiceMode

WEATHER = Tool(FunctionDefinition("get_weather", "Weather in a city", json.dumps(
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})))
TIME = Tool(FunctionDefinition("get_time"))
REQUIRED, NAMED = ToolChoice(ToolChoiceMode.REQUIRED), ToolChoice(ToolChoiceMode.FUNCTION, "get_time")


def test_required_is_any_of_the_tools_and_named_is_that_tool() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    required = forced_call_schema([WEATHER, TIME], REQUIRED)
    assert required is not None and len(required["anyOf"]) == 2
    good: list[dict[str, object]] = [{"name": "get_weather", "arguments": {"city": "Oslo"}},
                                     {"name": "get_time", "arguments": {}}]
    bad: list[dict[str, object]] = [{"name": "get_weather", "arguments": {}}, {"name": "other", "arguments": {}},
                                    {"name": "get_time"}, {"name": "get_time", "arguments": {}, "extra": 1}]
    for call in good:
        jsonschema.validate(call, required)
    for call in bad:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(call, required)
    named = forced_call_schema([WEATHER, TIME], NAMED)
    assert named is not None and named["properties"]["name"] == {"const": "get_time"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(good[0], named)


def test_one_tool_required_is_that_tools_schema_and_auto_or_none_force_nothing() -> None:
    assert forced_call_schema([WEATHER], REQUIRED) == forced_call_schema([WEATHER], ToolChoice(
        ToolChoiceMode.FUNCTION, "get_weather"))
    assert forced_call_schema([WEATHER], ToolChoice()) is None
    assert forced_call_schema([WEATHER], ToolChoice(ToolChoiceMode.NONE)) is None


def test_a_forced_call_is_a_json_schema_constraint_and_bad_choices_are_named() -> None:
    forced = forced_call_constraint([WEATHER], REQUIRED)
    assert forced is not None and forced.kind is ConstraintKind.JSON_SCHEMA
    assert json.loads(forced.spec) == forced_call_schema([WEATHER], REQUIRED)
    with pytest.raises(InvalidRequest, match="'nope', which is not in tools"):
        forced_call_constraint([WEATHER], ToolChoice(ToolChoiceMode.FUNCTION, "nope"))
    with pytest.raises(InvalidRequest, match="at least one tool"):
        forced_call_constraint([], REQUIRED)
    assert forced_call_constraint([WEATHER], ToolChoice()) is None


def test_the_parsers_a_request_runs() -> None:
    assert output_parsing([WEATHER], ToolChoice(), False, "hermes", "think") == OutputParsing("hermes", "none")
    assert output_parsing([WEATHER], ToolChoice(ToolChoiceMode.NONE), True, "hermes", "think") == OutputParsing(
        "none", "think")
    assert output_parsing([], ToolChoice(), False, "none", "none") == OutputParsing()
    assert output_parsing([WEATHER], REQUIRED, False, "hermes", "think").tool_call_parser == "llama3_json"
    with pytest.raises(InvalidRequest, match="--tool-call-parser none"):
        output_parsing([WEATHER], ToolChoice(), False, "none", "think")
    with pytest.raises(InvalidRequest, match="--reasoning-parser none"):
        output_parsing([], ToolChoice(), True, "hermes", "none")
