"""Tool calls and reasoning through the public gRPC API: the real tokenizer tier over an echo generator
(the output is the test's choice), and the real default model for rendering and tool_choice none."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from splitserve.api.text.v1 import text_pb2 as pb
from splitserve.api.text.v1 import text_pb2_grpc
from splitserve.common.model_store import DEFAULT_MODEL_NAME
from splitserve.tokenizer import server as tokenizer_server
from splitserve.tokenizer.config import TokenizerConfig
from splitserve.tokenizer.server import start_tokenizer
from splitserve.tokenizer.text_codec import TextCodec

from .conftest import Stack
from .echo_generator import EchoGeneratorClient

WEATHER = pb.Tool(type="function", function=pb.FunctionDefinition(
    name="get_weather", description="Current weather in a city", parameters_json=json.dumps(
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})))
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
async def echo(model_dir: Path) -> AsyncIterator[text_pb2_grpc.TextGenerationServiceStub]:
    codec = TextCodec(str(model_dir))
    with pytest.MonkeyPatch.context() as patch:  # every generator replica this tier dials is the echo
        patch.setattr(tokenizer_server, "client_factory", lambda *a, **k: lambda address: EchoGeneratorClient(codec))
        tier = await start_tokenizer(TokenizerConfig(str(model_dir), DEFAULT_MODEL_NAME, address="127.0.0.1:0",
                                                     generator_address="echo:1", generator_wait_seconds=10))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{tier.port}")
    yield text_pb2_grpc.TextGenerationServiceStub(channel)
    await channel.close()
    await tier.stop(0)


def chat(user: str, tools: list[pb.Tool] | None = None, **choice: Any) -> pb.ChatInput:
    return pb.ChatInput(messages=[pb.ChatMessage(role="user", content=user)], tools=tools or [],
                        tool_choice=pb.ToolChoice(**choice) if choice else None)


async def both(stub: text_pb2_grpc.TextGenerationServiceStub,
               **fields: Any) -> tuple[pb.GenerateResponse, list[pb.GenerateStreamResponse]]:
    unary = await stub.Generate(pb.GenerateRequest(**fields))
    return unary, [m async for m in stub.GenerateStream(pb.GenerateStreamRequest(**fields))]


def streamed_calls(parts: list[pb.GenerateStreamResponse]) -> list[tuple[str, str]]:
    calls: dict[int, list[str]] = {}
    for part in parts:
        for delta in part.tool_calls:
            if delta.index not in calls:
                assert delta.id.startswith("call_") and delta.name, "id and name come on the first delta"
                calls[delta.index] = [delta.name, ""]
            calls[delta.index][1] += delta.arguments
    return [(name, arguments) for name, arguments in calls.values()]


async def test_a_hermes_call_streams_name_then_arguments_and_ends_with_tool_calls(echo: Any) -> None:
    unary, parts = await both(echo, chat=chat(f"Checking.{CALL}", [WEATHER]))
    assert [(c.function.name, c.function.arguments) for c in unary.tool_calls] == streamed_calls(parts) == [
        ("get_weather", '{"city": "Paris"}')]
    assert unary.tool_calls[0].id.startswith("call_") and unary.tool_calls[0].type == "function"
    assert unary.text == "".join(p.text for p in parts) == "Checking."
    assert unary.finish_reason == parts[-1].finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert sum(1 for p in parts if p.tool_calls) > 2  # the arguments came in fragments
    assert not unary.tool_parse_error and not parts[-1].tool_parse_error


async def test_malformed_call_json_is_plain_text_with_the_reason(echo: Any) -> None:
    broken = '<tool_call>{"name": "get_weather", "arguments": {"city": }}</tool_call>'
    unary, parts = await both(echo, chat=chat(broken, [WEATHER]))
    assert unary.text == "".join(p.text for p in parts) == broken
    assert not unary.tool_calls
    assert "not valid JSON" in unary.tool_parse_error and unary.tool_parse_error == parts[-1].tool_parse_error
    assert unary.finish_reason == parts[-1].finish_reason == pb.FINISH_REASON_EOS_TOKEN


async def test_a_call_cut_by_max_new_tokens_ends_with_length_and_the_reason(echo: Any) -> None:
    unary = await echo.Generate(pb.GenerateRequest(chat=chat(CALL, [WEATHER]),
                                                   stopping=pb.StoppingCriteria(max_new_tokens=12)))
    assert unary.finish_reason == pb.FINISH_REASON_LENGTH and "ended inside the call" in unary.tool_parse_error
    assert not unary.tool_calls and unary.text.startswith("<tool_call>")


async def test_reasoning_is_separated_and_stops_apply_to_the_answer_only(echo: Any) -> None:
    fields = {"chat": chat("<think>I could say STOP.</think>\nIt is 4. STOP here"),
              "options": pb.ResponseOptions(separate_reasoning=True), "stopping": pb.StoppingCriteria(stop=["STOP"])}
    unary, parts = await both(echo, **fields)
    assert unary.reasoning_text == "".join(p.reasoning_text for p in parts) == "I could say STOP."
    assert unary.text == "".join(p.text for p in parts) == "It is 4. "
    assert unary.finish_reason == pb.FINISH_REASON_STOP_SEQUENCE and unary.stop_sequence == "STOP"


async def test_without_separate_reasoning_the_tags_stay_in_the_text(echo: Any) -> None:
    unary = await echo.Generate(pb.GenerateRequest(chat=chat("<think>hm</think>4")))
    assert (unary.text, unary.reasoning_text) == ("<think>hm</think>4", "")


async def test_tool_choice_none_neither_renders_nor_parses(echo: Any) -> None:
    unary = await echo.Generate(pb.GenerateRequest(chat=chat(CALL, [WEATHER], mode=pb.TOOL_CHOICE_MODE_NONE)))
    assert unary.text == CALL and not unary.tool_calls and unary.finish_reason == pb.FINISH_REASON_EOS_TOKEN
    with_tools = await echo.Tokenize(pb.TokenizeRequest(chat=chat("hi", [WEATHER])))
    without = await echo.Tokenize(pb.TokenizeRequest(chat=chat("hi", [WEATHER], mode=pb.TOOL_CHOICE_MODE_NONE)))
    assert len(with_tools.ids) > len(without.ids) == len((await echo.Tokenize(pb.TokenizeRequest(
        chat=chat("hi")))).ids)


@pytest.mark.parametrize("choice", [{"mode": pb.TOOL_CHOICE_MODE_REQUIRED}, {"function_name": "get_weather"}])
async def test_a_forced_call_is_held_to_the_tools_schema_by_constrained_decoding(stack: Stack,
                                                                                 choice: dict[str, Any]) -> None:
    """The real model on the native engine: `required` or a named function gives a call, whatever it would say."""
    request = pb.GenerateRequest(chat=chat("Say hello.", [WEATHER], **choice),
                                 sampling=pb.SamplingParams(temperature=1.0, seed=3),
                                 stopping=pb.StoppingCriteria(max_new_tokens=48))
    unary = await stack.text.Generate(request)
    [call] = unary.tool_calls
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    assert isinstance(json.loads(call.function.arguments), dict) and unary.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    parts = [p async for p in stack.text.GenerateStream(pb.GenerateStreamRequest(
        chat=request.chat, sampling=request.sampling, stopping=request.stopping))]
    assert streamed_calls(parts) == [(call.function.name, call.function.arguments)]


@pytest.mark.parametrize("fields,message", [
    ({"chat": chat("hi", [WEATHER], function_name="nope")}, "not in tools"),
    ({"chat": chat("hi", [WEATHER], mode=pb.TOOL_CHOICE_MODE_REQUIRED), "constraint": pb.Constraint(regex="a+")},
     "cannot both be given")])
async def test_bad_forced_choices_are_refused(echo: Any, fields: dict[str, Any], message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await echo.Generate(pb.GenerateRequest(**fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in (caught.value.details() or "")


@pytest.mark.parametrize("tool,message", [
    (pb.Tool(function=pb.FunctionDefinition(name="f", parameters_json="[1")), "is not JSON"),
    (pb.Tool(type="retrieval", function=pb.FunctionDefinition(name="f")), "only \"function\""),
    (pb.Tool(function=pb.FunctionDefinition()), "has no name")])
async def test_bad_tools_are_refused(echo: Any, tool: pb.Tool, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await echo.Generate(pb.GenerateRequest(chat=chat("hi", [tool])))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in (caught.value.details() or "")


async def test_a_history_with_calls_and_results_renders_them_in_the_hermes_form(echo: Any) -> None:
    messages = [pb.ChatMessage(role="user", content="Weather in Paris?"),
                pb.ChatMessage(role="assistant", tool_calls=[pb.ToolCall(id="call_1", type="function", function=(
                    pb.FunctionCall(name="get_weather", arguments='{"city": "Paris"}')))]),
                pb.ChatMessage(role="tool", tool_call_id="call_1", name="get_weather", content='{"temp_c": 21}')]
    ids = (await echo.Tokenize(pb.TokenizeRequest(chat=pb.ChatInput(messages=messages, tools=[WEATHER])))).ids
    text = (await echo.Detokenize(pb.DetokenizeRequest(ids=ids, skip_special_tokens=False))).text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert '<|im_start|>tool\n<tool_response>\n{"temp_c": 21}\n</tool_response><|im_end|>' in text
    assert text.startswith("<|im_start|>system\n# Tools") and '"name": "get_weather"' in text


async def test_the_real_model_gets_the_tools_in_its_prompt_and_none_leaves_them_out(stack: Stack) -> None:
    request = pb.GenerateRequest(chat=chat("What is the weather in Paris?", [WEATHER]),
                                 stopping=pb.StoppingCriteria(max_new_tokens=24))
    auto = await stack.text.Generate(request)
    request.chat.tool_choice.mode = pb.TOOL_CHOICE_MODE_NONE
    none = await stack.text.Generate(request)
    plain = await stack.text.Tokenize(pb.TokenizeRequest(chat=chat("What is the weather in Paris?")))
    assert auto.usage.prompt_tokens > none.usage.prompt_tokens == len(plain.ids)
    assert auto.usage.completion_tokens > 0 and none.usage.completion_tokens > 0
    assert not none.tool_calls and not none.tool_parse_error
    assert auto.finish_reason in (pb.FINISH_REASON_TOOL_CALLS, pb.FINISH_REASON_EOS_TOKEN, pb.FINISH_REASON_LENGTH)
