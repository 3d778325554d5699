"""Structured output, tool calls and reasoning through the OpenAI-compatible HTTP API, with the official
`openai` client: the real default model on the native engine for constrained decoding and forced calls,
and the real tokenizer tier over the echo generator (the output is the test's choice) for parsed calls,
parse errors and reasoning."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion

from splitserve.common.model_store import DEFAULT_MODEL_NAME
from splitserve.tokenizer import server as tokenizer_server
from splitserve.tokenizer.config import TokenizerConfig
from splitserve.tokenizer.server import start_tokenizer
from splitserve.tokenizer.text_codec import TextCodec

from .conftest import Stack
from .echo_generator import EchoGeneratorClient
from .test_constrained_decoding import PERSON, PHONE

MODEL = DEFAULT_MODEL_NAME
WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                   "required": ["city"], "additionalProperties": False}}}
NAMED: Any = {"type": "function", "function": {"name": "get_weather"}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def user(content: str) -> Any:
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
async def client(stack: Stack) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=stack.http_url, api_key="unused", max_retries=0) as aclient:
        yield aclient


@pytest.fixture(scope="module")
async def echo(model_dir: Path) -> AsyncIterator[openai.AsyncOpenAI]:
    """The tokenizer tier, HTTP on, over echo replicas (which have no constrained decoding)."""
    codec = TextCodec(str(model_dir))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tokenizer_server, "client_factory", lambda *a, **k: lambda address: EchoGeneratorClient(codec))
        tier = await start_tokenizer(TokenizerConfig(str(model_dir), MODEL, address="127.0.0.1:0",
                                                     http_address="127.0.0.1:0", generator_address="echo:1",
                                                     generator_wait_seconds=10))
    async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{tier.http_port}/v1", api_key="unused",
                                  max_retries=0) as aclient:
        yield aclient
    await tier.stop(0)


async def streamed(client: openai.AsyncOpenAI, **fields: Any) -> tuple[ChatCompletion, list[Any]]:
    """A streamed chat completion as the openai client accumulates it, and its chunks."""
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    chunks = [chunk async for chunk in await client.chat.completions.create(model=MODEL, stream=True, **fields)]
    for chunk in chunks:
        state.handle_chunk(chunk)
    return state.get_final_completion(), chunks


async def test_response_format_json_schema_is_valid_json(client: openai.AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(
        model=MODEL, messages=user("Describe a person as JSON."), max_tokens=48, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    choice = answer.choices[0]
    assert choice.finish_reason == "stop" and choice.message.content is not None
    jsonschema.validate(json.loads(choice.message.content), PERSON)
    whole, _ = await streamed(client, messages=user("Describe a person as JSON."), max_tokens=48, temperature=0,
                              response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}})
    assert whole.choices[0].message.content == choice.message.content


async def test_response_format_json_object(client: openai.AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(
        model=MODEL, messages=user('Reply with a JSON object with a key "ok" set to true.'), max_tokens=16,
        temperature=0, response_format={"type": "json_object"})
    assert answer.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)


async def test_completions_take_the_guides_and_response_format(client: openai.AsyncOpenAI) -> None:
    phone = await client.completions.create(model=MODEL, prompt="A US phone number:", max_tokens=16, temperature=0,
                                            extra_body={"guided_regex": PHONE})
    assert re.fullmatch(PHONE, phone.choices[0].text) and phone.choices[0].finish_reason == "stop"
    colour = await client.completions.create(model=MODEL, prompt="My favourite colour is", max_tokens=8,
                                             temperature=0, extra_body={"guided_choice": ["red", "green", "blue"]})
    assert colour.choices[0].text in ("red", "green", "blue")
    person = await client.completions.create(model=MODEL, prompt="A person as JSON:", max_tokens=48, temperature=0,
                                             extra_body={"guided_json": PERSON})
    jsonschema.validate(json.loads(person.choices[0].text), PERSON)


@pytest.mark.parametrize("tool_choice", [NAMED, "required"])
async def test_a_forced_call_is_a_tool_call_streamed_the_same(client: openai.AsyncOpenAI, tool_choice: Any) -> None:
    fields: Any = {"messages": user("Say hello."), "tools": [WEATHER], "tool_choice": tool_choice,
                   "max_tokens": 48, "temperature": 0}
    answer = await client.chat.completions.create(model=MODEL, **fields)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert isinstance(json.loads(call.function.arguments), dict)  # type: ignore[union-attr]
    whole, chunks = await streamed(client, **fields)
    [again] = whole.choices[0].message.tool_calls or []
    assert (again.function.name, again.function.arguments) == (  # type: ignore[union-attr]
        call.function.name, call.function.arguments)  # type: ignore[union-attr]
    assert whole.choices[0].finish_reason == "tool_calls"
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id and deltas[0].type == "function" and deltas[0].function.name == "get_weather"
    assert all(d.id is None and d.function.name is None for d in deltas[1:])


async def test_tool_choice_none_answers_in_plain_text_without_the_tools(client: openai.AsyncOpenAI) -> None:
    fields: Any = {"model": MODEL, "messages": user("Say hello."), "max_tokens": 8, "temperature": 0}
    with_none = await client.chat.completions.create(tools=[WEATHER], tool_choice="none", **fields)
    plain = await client.chat.completions.create(**fields)
    assert with_none.choices[0].message.tool_calls is None
    assert with_none.choices[0].message.content == plain.choices[0].message.content
    assert with_none.usage == plain.usage  # the tools were not rendered into the prompt


REFUSED = [
    ({"tools": [WEATHER], "tool_choice": NAMED, "response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [WEATHER], "tool_choice": "required", "extra_body": {"guided_regex": "a+"}}, "guided_regex"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"response_format": {"type": "json_object"}, "extra_body": {"guided_json": PERSON}}, "guided_json"),
    ({"response_format": {"type": "json_object"}, "extra_body": {"ignore_eos": True}}, "ignore_eos"),
    ({"tools": [WEATHER], "parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"n": 17}, "n"),
]


@pytest.mark.parametrize(("fields", "param"), REFUSED)
async def test_conflicting_or_bad_fields_are_a_400_naming_them(client: openai.AsyncOpenAI, fields: Any,
                                                               param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL, messages=user("Hi"), max_tokens=2, **fields)
    assert caught.value.body["param"] == param and param in caught.value.body["message"]  # type: ignore[index]


@pytest.mark.parametrize(("fields", "param"), [({"response_format": {"type": "json_object"}}, "response_format"),
                                               ({"extra_body": {"guided_choice": ["a", "b"]}}, "guided_choice"),
                                               ({"tools": [WEATHER], "tool_choice": "required"}, "tool_choice")])
async def test_an_engine_without_constrained_decoding_is_a_400_naming_the_field(
        echo: openai.AsyncOpenAI, fields: Any, param: str) -> None:
    with pytest.raises(openai.BadRequestError, match="cannot honour") as caught:
        await echo.chat.completions.create(model=MODEL, messages=user("Hi"), **fields)
    assert caught.value.body["param"] == param  # type: ignore[index]


async def test_auto_tool_calls_are_parsed_whole_and_streamed(echo: openai.AsyncOpenAI) -> None:
    fields: Any = {"messages": user(f"Checking.{CALL}"), "tools": [WEATHER]}
    answer = await echo.chat.completions.create(model=MODEL, **fields)
    whole, chunks = await streamed(echo, **fields)
    for choice in (answer.choices[0], whole.choices[0]):
        assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking."
        assert [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []] == [  # type: ignore[union-attr]
            ("get_weather", '{"city": "Paris"}')]
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.tool_calls) > 2  # argument fragments


async def test_raw_tool_call_deltas_have_openais_shape(echo: openai.AsyncOpenAI) -> None:
    body = {"model": MODEL, "messages": user(CALL), "tools": [WEATHER], "stream": True}
    async with httpx.AsyncClient() as http, http.stream("POST", f"{echo.base_url}chat/completions",
                                                        json=body) as answer:
        lines = [line async for line in answer.aiter_lines() if line.startswith("data: {")]
    deltas = [d for line in lines for d in json.loads(line[6:])["choices"][0]["delta"].get("tool_calls", [])]
    assert set(deltas[0]) == {"index", "id", "type", "function"} and deltas[0]["function"]["name"] == "get_weather"
    assert all(set(d) == {"index", "function"} and set(d["function"]) == {"arguments"} for d in deltas[1:])
    assert json.loads("".join(d["function"]["arguments"] for d in deltas)) == {"city": "Paris"}


async def test_a_malformed_call_is_text_with_the_parse_error(echo: openai.AsyncOpenAI) -> None:
    broken = '<tool_call>{"name": "get_weather", "arguments": {"city": }}</tool_call>'
    answer = await echo.chat.completions.create(model=MODEL, messages=user(broken), tools=[WEATHER])
    choice = answer.choices[0]
    assert choice.message.content == broken and choice.message.tool_calls is None and choice.finish_reason == "stop"
    assert "not valid JSON" in choice.model_extra["tool_parse_error"]  # type: ignore[index]


async def test_separate_reasoning_gives_reasoning_content(echo: openai.AsyncOpenAI) -> None:
    fields: Any = {"messages": user("<think>I could say STOP.</think>\nIt is 4."),
                   "extra_body": {"separate_reasoning": True}}
    answer = await echo.chat.completions.create(model=MODEL, **fields)
    message = answer.choices[0].message
    assert (message.content, message.model_extra["reasoning_content"]) == (  # type: ignore[index]
        "It is 4.", "I could say STOP.")
    _, chunks = await streamed(echo, **fields)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.model_extra.get("reasoning_content") or "" for d in deltas) == "I could say STOP."
    assert "".join(d.content or "" for d in deltas) == "It is 4."
    plain = await echo.chat.completions.create(model=MODEL, messages=fields["messages"])
    assert plain.choices[0].message.content == fields["messages"][0]["content"]
    assert "reasoning_content" not in (plain.choices[0].message.model_extra or {})


async def test_a_history_of_calls_and_results_is_taken(echo: openai.AsyncOpenAI) -> None:
    messages: Any = [*user("Weather in Paris?"),
                     {"role": "assistant", "content": None, "tool_calls": [
                         {"id": "call_1", "type": "function",
                          "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                     {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}, *user("Thanks!")]
    answer = await echo.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    assert answer.choices[0].message.content == "Thanks!"
    with pytest.raises(openai.BadRequestError) as caught:
        await echo.chat.completions.create(model=MODEL, messages=[{"role": "tool", "content": "sunny"}])
    assert caught.value.body["param"] == "messages.0.tool_call_id"  # type: ignore[index]
