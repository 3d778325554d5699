"""What a request asks the model to read, in plain types, and its one tokenization (both public APIs)."""

from __future__ import annotations

from dataclasses import dataclass

from splitserve.common.errors import InvalidRequest
from splitserve.tokenizer.config import TokenizerConfig
from splitserve.tokenizer.text_codec import ChatMessage, TextCodec
from splitserve.tokenizer.types import Tool

# Prompts longer than this are tokenized on a worker thread so the event loop keeps streaming.
OFF_LOOP_PROMPT_CHARS = 8192


@dataclass(frozen=True)
class TextInput:
    """Exactly one of a prompt, chat messages or token ids; None everywhere means the request has no input."""

    prompt: str | None = None
    chat: tuple[ChatMessage, ...] | None = None
    tools: tuple[Tool, ...] = ()  # rendered into a chat (none when tool_choice is none)
    token_ids: tuple[int, ...] | None = None
    add_generation_prompt: bool = True
    allow_special_tokens_in_content: bool = False
    add_special_tokens: bool = False  # Tokenize only: the tokenizer's BOS/EOS around a plain prompt

    @property
    def is_heavy(self) -> bool:
        """Long enough to tokenize off the event loop."""
        return self.prompt is not None and len(self.prompt) > OFF_LOOP_PROMPT_CHARS

    def text_for_span(self) -> str:
        """The input as text, for spans when the operator opted in to content."""
        if self.chat is not None:
            return "\n".join(m.content for m in self.chat)
        return self.prompt or ""


def encode(text_input: TextInput, codec: TextCodec, config: TokenizerConfig) -> list[int]:
    """Token IDs for whichever input the request carries, within the input size limits."""
    if text_input.prompt is not None:
        text = text_input.prompt
        if len(text) > config.max_prompt_chars:
            raise InvalidRequest(f"prompt has {len(text)} characters, over the limit "
                                 f"max_prompt_chars={config.max_prompt_chars}")
        return codec.encode_text(text, add_special_tokens=text_input.add_special_tokens)
    if text_input.chat is not None:
        return _encode_chat(text_input, text_input.chat, codec, config)
    if text_input.token_ids is not None:
        return list(text_input.token_ids)
    raise InvalidRequest("the request has no input: set one of prompt, chat or token_ids")


def _encode_chat(text_input: TextInput, chat: tuple[ChatMessage, ...], codec: TextCodec,
                 config: TokenizerConfig) -> list[int]:
    if len(chat) > config.max_chat_messages:  # templates render each turn: cost grows with the count
        raise InvalidRequest(f"chat has {len(chat)} messages, over the limit "
                             f"max_chat_messages={config.max_chat_messages}")
    if _chat_chars(chat, text_input.tools) > config.max_prompt_chars:
        raise InvalidRequest(f"chat content is over the limit max_prompt_chars={config.max_prompt_chars}")
    return codec.encode_chat(chat, text_input.add_generation_prompt, text_input.allow_special_tokens_in_content,
                             text_input.tools)


def _chat_chars(chat: tuple[ChatMessage, ...], tools: tuple[Tool, ...]) -> int:
    """What the template renders: content, roles, calls and tool specs."""
    messages = sum(len(m.content) + len(m.role) + sum(len(c.name) + len(c.arguments) for c in m.tool_calls)
                   for m in chat)
    return messages + sum(len(t.function.name) + len(t.function.description) + len(t.function.parameters_json)
                          for t in tools)
