"""Running one generation as an ASGI response: JSON or server-sent events, cancelled by a disconnect.

The whole request, from tokenization to the last event, runs in the ASGI task itself (one task, as on
the gRPC side), so that when the client goes away, cancelling that task closes the pipeline's streams
and the generator frees the engine slot. Errors before the first token get their HTTP status; an error
after it (the status is sent) is an `error` event, as vLLM and OpenAI send it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import Any

from splitserve.common.errors import RequestError
from splitserve.tokenizer.http.errors import error_body, error_headers, error_json, status_of
from splitserve.tokenizer.http.responses import ResponseShaper, dumps
from splitserve.tokenizer.types import TextChunk

Send = Callable[[dict[str, Any]], Any]
Receive = Callable[[], Any]
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = ((b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"))
JSON_HEADERS = ((b"content-type", b"application/json"),)


class DisconnectCancels:
    """Cancels the current task when the client disconnects; the cancellation ends at this block's edge.

    The request body must have been read before entering (the watcher consumes `receive`).
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.disconnected = False

    async def __aenter__(self) -> DisconnectCancels:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._watcher = asyncio.create_task(self._watch())
        return self

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.disconnected = True
        self._task.cancel()

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> bool:
        self._watcher.cancel()
        if not (self.disconnected and kind is not None and issubclass(kind, asyncio.CancelledError | OSError)):
            return False
        if self._task.cancelling():
            self._task.uncancel()
        return True  # the client is gone: nothing to answer


def raw_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in headers.items()]


async def send_error(send: Send, error: RequestError, headers: Mapping[str, str]) -> None:
    """A whole error response: OpenAI's JSON with the error's status."""
    await send({"type": "http.response.start", "status": status_of(error).status,
                "headers": [*JSON_HEADERS, *raw_headers({**headers, **error_headers(error)})]})
    await send({"type": "http.response.body", "body": error_json(error)})


class GenerationResponse:
    """An ASGI app answering one request from its stream of text chunks."""

    def __init__(self, chunks: AsyncIterator[TextChunk], shaper: ResponseShaper, stream: bool,
                 include_usage: bool, headers: Mapping[str, str], release: Callable[[], None]) -> None:
        self._chunks, self._shaper = chunks, shaper
        self._stream, self._include_usage = stream, include_usage
        self._headers, self._release = headers, release

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        try:
            async with DisconnectCancels(receive), contextlib.aclosing(self._chunks):  # type: ignore[type-var]
                await (self._send_events(send) if self._stream else self._send_whole(send))
        finally:
            self._release()

    async def _send_whole(self, send: Send) -> None:
        try:
            chunks = [chunk async for chunk in self._chunks]
        except RequestError as error:
            await send_error(send, error, self._headers)
            return
        body = dumps(self._shaper.completion(chunks))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*JSON_HEADERS, *raw_headers(self._headers)]})
        await send({"type": "http.response.body", "body": body})

    async def _send_events(self, send: Send) -> None:
        try:
            first = await anext(self._chunks)
        except RequestError as error:
            await send_error(send, error, self._headers)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*SSE_HEADERS, *raw_headers(self._headers)]})
        last = first
        try:
            await self._event(send, self._shaper.chunk(first))
            async for chunk in self._chunks:
                last = chunk
                await self._event(send, self._shaper.chunk(chunk))
        except RequestError as error:
            await self._event(send, error_body(error))
        else:
            if self._include_usage:
                await self._event(send, self._shaper.usage_chunk(last))
        await send({"type": "http.response.body", "body": DONE})

    @staticmethod
    async def _event(send: Send, body: dict[str, Any]) -> None:
        await send({"type": "http.response.body", "body": b"data: " + dumps(body) + b"\n\n", "more_body": True})
