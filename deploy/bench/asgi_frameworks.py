"""CPU per request and per streamed event of the ASGI layer alone: Starlette (what the HTTP API uses) and
FastAPI over the same pydantic body model, called directly as ASGI apps (no sockets, no server), so only
the framework's own work is measured. FastAPI is not a dependency: `pip install fastapi==0.163.2` first.

    python deploy/bench/asgi_frameworks.py [REQUESTS]
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse as FastStreaming
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

BODY = json.dumps({"model": "m", "prompt": "hello " * 100, "max_tokens": 128, "temperature": 0}).encode()
EVENTS = 128


class Body(BaseModel):
    model: str
    prompt: str
    max_tokens: int
    temperature: float


async def events() -> AsyncIterator[bytes]:
    for i in range(EVENTS):
        yield b"data: " + json.dumps({"choices": [{"text": "x", "index": i}]}).encode() + b"\n\n"


async def star_whole(request: Request) -> JSONResponse:
    body = Body.model_validate_json(await request.body())
    return JSONResponse({"model": body.model, "text": "x"})


async def star_stream(request: Request) -> StreamingResponse:
    Body.model_validate_json(await request.body())
    return StreamingResponse(events(), media_type="text/event-stream")


fast = FastAPI()


@fast.post("/whole")
async def fast_whole(body: Body) -> dict[str, str]:
    return {"model": body.model, "text": "x"}


@fast.post("/stream")
async def fast_stream(body: Body) -> FastStreaming:
    return FastStreaming(events(), media_type="text/event-stream")


star = Starlette(routes=[Route("/whole", star_whole, methods=["POST"]),
                         Route("/stream", star_stream, methods=["POST"])])


async def call(app: Any, path: str) -> int:
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
             "scheme": "http", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 1)}
    sent = [False]
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    count = [0]

    async def send(message: dict[str, Any]) -> None:
        count[0] += message["type"] == "http.response.body"

    await app(scope, receive, send)
    done.set()
    return count[0]


async def measure(app: Any, path: str, n: int) -> float:
    for _ in range(50):
        await call(app, path)
    start = time.process_time()
    for _ in range(n):
        await call(app, path)
    return (time.process_time() - start) / n * 1e6


async def main(n: int) -> None:
    for name, app in (("starlette", star), ("fastapi", fast)):
        whole, stream = await measure(app, "/whole", n), await measure(app, "/stream", n // 4)
        print(f"{name:<10} whole answer {whole:7.1f} µs/request   stream of {EVENTS} events {stream:8.1f} µs "
              f"({(stream - whole) / EVENTS:.2f} µs/event beyond a whole answer)")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 4000))
