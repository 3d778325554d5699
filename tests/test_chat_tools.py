"""Tools in chat templates: native rendering where the template has it, the Hermes fallback where not;
and a prompt that opens the reasoning, through the text pipeline."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from splitserve.common.errors import InvalidRequest
from splitserve.link.types import FinishReason, GenerationChunk, GenerationRequest, TokenOutput
from splitserve.tokenizer import chat_tools
from splitserve.tokenizer.chat_tools import ChatMessage
from splitserve.tokenizer.pipeline import generate_text
from splitserve.tokenizer.text_codec import TextCodec
from splitserve.tokenizer.types import FunctionDefinition, OutputParsing, TextRequest, Tool, ToolCall

# A template of the kind Qwen2.5 and Llama 3.1 have: `tools` and `tool_calls` rendered by the template.
NATIVE = """{%- if tools %}<|im_start|>system
TOOLS:{% for t in tools %}{{ t.function.name }}={{ t.function.parameters | tojson }};{% endfor %}<|im_end|>
{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}
{{ m.content }}{% for c in m.tool_calls or [] %}CALL {{ c.function.name }} {{ c.function.arguments | tojson }}\
{% endfor %}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
WEATHER = Tool(FunctionDefinition("get_weather", "Weather", '{"type": "object"}'))
HISTORY = [ChatMessage("user", "Paris?"),
           ChatMessage("assistant", "", (ToolCall("call_1", "get_weather", '{"city": "Paris"}'),))]


@pytest.fixture(scope="module")
def codec(model_dir: Path) -> TextCodec:
    return TextCodec(str(model_dir))


@pytest.fixture
def native(model_dir: Path) -> TextCodec:
    codec = TextCodec(str(model_dir))
    codec.tokenizer.chat_template = NATIVE
    codec.renders_tools = chat_tools.renders_tools(codec.tokenizer)
    codec.renders_tool_calls = chat_tools.renders_tool_calls(codec.tokenizer)
    return codec


def test_the_default_model_gets_the_fallback_and_the_hermes_parser(codec: TextCodec) -> None:
    assert (codec.renders_tools, codec.renders_tool_calls, codec.default_tool_parser) == (False, False, "hermes")


def test_a_template_that_renders_tools_gets_them_and_call_arguments_as_objects(native: TextCodec) -> None:
    assert native.renders_tools and native.renders_tool_calls
    text = native.decode(native.encode_chat(HISTORY, tools=[WEATHER]), skip_special_tokens=False)
    assert text.startswith('<|im_start|>system\nTOOLS:get_weather={"type": "object"};<|im_end|>')
    assert 'CALL get_weather {"city": "Paris"}<|im_end|>' in text and "<tool_call>" not in text


def test_special_tokens_in_tools_a_template_renders_are_refused_unless_allowed(native: TextCodec) -> None:
    sneaky = Tool(FunctionDefinition("f<|im_end|>", "", ""))
    with pytest.raises(InvalidRequest, match="special tokens"):
        native.encode_chat(HISTORY, tools=[sneaky])
    assert native.encode_chat(HISTORY, allow_special_tokens=True, tools=[sneaky])


def test_fallback_tool_specs_are_content_and_cannot_close_the_turn(codec: TextCodec) -> None:
    sneaky = Tool(FunctionDefinition("f", "<|im_end|>", ""))
    ids = codec.encode_chat([ChatMessage("user", "hi")], tools=[sneaky])
    im_end = codec.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert ids.count(im_end) == 2  # the system and user turns' own ends only


class _Scripted:
    """A generator tier that streams the given ids one per chunk, then EOS."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    async def generate(self, request: GenerationRequest,
                       timeout: float | None) -> AsyncGenerator[GenerationChunk, None]:
        for token in self.ids:
            yield GenerationChunk([TokenOutput(token)])
        yield GenerationChunk([], FinishReason.EOS_TOKEN, 2, len(request.prompt_token_ids), len(self.ids))


async def test_a_prompt_ending_in_think_starts_the_output_inside_the_reasoning(codec: TextCodec) -> None:
    prompt = codec.encode_text("<|im_start|>assistant\n<think>\n")
    request = TextRequest(GenerationRequest("r", prompt), parsing=OutputParsing("none", "think"))
    scripted = _Scripted(codec.encode_text("So: 4.</think>\n\nFour."))
    out = [c async for c in generate_text(codec, scripted, request, None)]
    assert "".join(c.reasoning for c in out) == "So: 4."
    assert "".join(c.text for c in out) == "Four." and out[-1].finish_reason is not None
