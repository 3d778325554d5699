"""The tier's text chunks → OpenAI's response JSON: whole completions and streamed chunks."""

from __future__ import annotations

import json
import time
from typing import Any

from splitserve.tokenizer.http.requests import Plan
from splitserve.tokenizer.output_parsing import collect_tool_calls
from splitserve.tokenizer.samples import by_completion
from splitserve.tokenizer.text_codec import TextCodec
from splitserve.tokenizer.types import TextChunk, TextFinishReason, TextToken, ToolCallDelta

_FINISH = {
    TextFinishReason.LENGTH: "length",
    TextFinishReason.EOS_TOKEN: "stop",
    TextFinishReason.STOP_SEQUENCE: "stop",
    TextFinishReason.STOP_TOKEN: "stop",
    TextFinishReason.CANCELLED: "abort",  # vLLM's name; OpenAI has none
    TextFinishReason.TOOL_CALLS: "tool_calls",
}


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


class ResponseShaper:
    """Builds one request's response objects; keeps the little state streaming needs (offsets, role sent)."""

    def __init__(self, plan: Plan, request_id: str, model: str, codec: TextCodec) -> None:
        self._plan, self._codec = plan, codec
        prefix, self._object = ("chatcmpl", "chat.completion") if plan.chat else ("cmpl", "text_completion")
        self._head = {"id": f"{prefix}-{request_id}", "object": self._object, "created": int(time.time()),
                      "model": model}
        self._role_sent: set[int] = set()  # completions whose first delta went out
        self._offsets: dict[int, int] = {}  # per completion: the text_offset of its next token
        self._finals: dict[int, TextChunk] = {}  # per completion: its last chunk, for the usage chunk

    def completion(self, chunks: list[TextChunk]) -> dict[str, Any]:
        """The whole answer of a request that was not streamed: one choice per completion (n)."""
        by_index = by_completion(chunks)
        choices = [self._choice(index, completion) for index, completion in by_index.items()]
        return {**self._head, "choices": choices, "usage": usage([c[-1] for c in by_index.values()])}

    def _choice(self, index: int, chunks: list[TextChunk]) -> dict[str, Any]:
        last = chunks[-1]
        text = "".join(c.text for c in chunks)
        choice: dict[str, Any] = {"index": index, "finish_reason": _FINISH.get(last.finish_reason or
                                                                               TextFinishReason.LENGTH),
                                  "stop_reason": _stop_reason(last)}
        tokens = [t for c in chunks for t in c.tokens]
        choice["logprobs"] = self._logprobs(tokens, index) if self._plan.logprobs else None
        if self._plan.chat:
            choice["message"] = self._message(chunks, text)
            _parse_error(choice, last)
        else:
            choice["text"] = text
        return choice

    def _message(self, chunks: list[TextChunk], text: str) -> dict[str, Any]:
        """The assistant message: content (null beside tool calls when empty), calls, vLLM's reasoning_content."""
        calls = [{"id": c.id, "type": c.type, "function": {"name": c.name, "arguments": c.arguments}}
                 for c in collect_tool_calls(chunks)]
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
        if calls:
            message["tool_calls"] = calls
        if self._plan.separate_reasoning:
            message["reasoning_content"] = "".join(c.reasoning for c in chunks) or None
        return message

    def chunk(self, chunk: TextChunk) -> dict[str, Any]:
        """One streamed delta (the last one carries the finish reason)."""
        reason = _FINISH[chunk.finish_reason] if chunk.finish_reason is not None else None
        choice: dict[str, Any] = {"index": chunk.index, "logprobs": self._logprobs(chunk.tokens, chunk.index)
                                  if self._plan.logprobs else None, "finish_reason": reason}
        if reason is not None:
            choice["stop_reason"] = _stop_reason(chunk)
            self._finals[chunk.index] = chunk
        if self._plan.chat:
            choice["delta"] = self._delta(chunk)
            _parse_error(choice, chunk)
        else:
            choice["text"] = chunk.text
        body: dict[str, Any] = {**self._head, "object": self._chunk_object, "choices": [choice]}
        if self._plan.include_usage:
            body["usage"] = None
        return body

    def _delta(self, chunk: TextChunk) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        if chunk.index not in self._role_sent:
            delta["role"] = "assistant"
            self._role_sent.add(chunk.index)
        if chunk.text or not (chunk.reasoning or chunk.tool_calls):
            delta["content"] = chunk.text
        if chunk.reasoning:
            delta["reasoning_content"] = chunk.reasoning
        if chunk.tool_calls:
            delta["tool_calls"] = [_call_delta(d) for d in chunk.tool_calls]
        return delta

    def usage_chunk(self, last: TextChunk) -> dict[str, Any]:
        """`stream_options.include_usage`: a last chunk with no choices and the usage."""
        finals = list(self._finals.values()) or [last]
        return {**self._head, "object": self._chunk_object, "choices": [], "usage": usage(finals)}

    @property
    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self._plan.chat else "text_completion"

    def _logprobs(self, tokens: list[TextToken], index: int) -> dict[str, Any]:
        return self._chat_logprobs(tokens) if self._plan.chat else self._text_logprobs(tokens, index)

    def _chat_logprobs(self, tokens: list[TextToken]) -> dict[str, Any]:
        return {"content": [{**self._entry(t.token_id, t.logprob),
                             "top_logprobs": [self._entry(i, lp) for i, lp in t.top_logprobs]} for t in tokens]}

    def _entry(self, token_id: int, logprob: float | None) -> dict[str, Any]:
        text = self._codec.decode([token_id], False)
        return {"token": text, "logprob": logprob if logprob is not None else 0.0,
                "bytes": list(text.encode())}

    def _text_logprobs(self, tokens: list[TextToken], index: int) -> dict[str, Any]:
        offsets, offset = [], self._offsets.get(index, 0)
        for t in tokens:
            offsets.append(offset)
            offset += len(t.text)
        self._offsets[index] = offset
        decode = self._codec.decode
        return {"tokens": [decode([t.token_id], False) for t in tokens],
                "token_logprobs": [t.logprob for t in tokens],
                "top_logprobs": [{decode([i], False): lp for i, lp in t.top_logprobs} for t in tokens]
                if self._plan.top_logprobs else None,
                "text_offset": offsets}


def usage(finals: list[TextChunk]) -> dict[str, Any]:
    """The request's usage from each completion's last chunk: the prompt once, every completion's tokens."""
    prompt, completion = finals[0].prompt_tokens, sum(c.completion_tokens for c in finals)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(c.cached_prompt_tokens for c in finals)}}


def _call_delta(delta: ToolCallDelta) -> dict[str, Any]:
    """OpenAI's streamed call: index, id, type and name on a call's first delta; argument fragments after."""
    out: dict[str, Any] = {"index": delta.index}
    function: dict[str, Any] = {}
    if delta.id:
        out["id"], out["type"] = delta.id, "function"
    if delta.name:
        function["name"] = delta.name
    function["arguments"] = delta.arguments
    out["function"] = function
    return out


def _parse_error(choice: dict[str, Any], last: TextChunk) -> None:
    """Our extra: why the answer was not read as tool calls, and the streamed call that turned out void."""
    if last.tool_parse_error:
        choice["tool_parse_error"] = last.tool_parse_error
        if last.void_tool_call is not None:
            choice["void_tool_call"] = last.void_tool_call


def _stop_reason(last: TextChunk) -> str | int | None:
    """vLLM's `stop_reason`: the stop string or stop token that ended the stream, if one did."""
    if last.finish_reason is TextFinishReason.STOP_SEQUENCE:
        return last.stop_sequence
    return last.stop_token_id if last.finish_reason is TextFinishReason.STOP_TOKEN else None
