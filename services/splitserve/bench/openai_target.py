"""The bench's target for the OpenAI-compatible HTTP API: streamed /v1/completions over httpx, as a
benchmark tool would send them (greedy, `ignore_eos`, usage in the last event)."""

from __future__ import annotations

import itertools
import json
from typing import Any

from splitserve.bench.records import RequestRecord
from splitserve.bench.workload import WorkItem


class OpenAITarget:
    """POST /v1/completions with `stream: true`; several base URLs (one per tokenizer process) go round-robin."""

    def __init__(self, client: Any, base_urls: list[str], model: str, timeout: float) -> None:
        self._client, self._model, self._timeout = client, model, timeout  # client: an httpx.AsyncClient
        self._urls = itertools.cycle([f"{url.rstrip('/')}/v1/completions" for url in base_urls])

    async def send(self, item: WorkItem, record: RequestRecord) -> None:
        body = {"model": self._model, "prompt": item.prompt, "max_tokens": item.max_new_tokens, "ignore_eos": True,
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        async with self._client.stream("POST", next(self._urls), json=body, timeout=self._timeout) as answer:
            if answer.status_code != 200:
                await answer.aread()
                record.fail(_code(answer.content))
                return
            async for line in answer.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    record.fail(str(event["error"]["code"]).upper())
                    return
                if event["choices"]:
                    record.on_message()
                if event.get("usage"):
                    record.finish(event["usage"]["completion_tokens"])


def _code(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["code"]).upper()
    except (ValueError, KeyError, TypeError):
        return "HTTP_ERROR"


async def served_model(client: Any, base_url: str) -> str:
    """The first model GET /v1/models lists (the bench names it in every request, as OpenAI clients must)."""
    answer = await client.get(f"{base_url.rstrip('/')}/v1/models")
    answer.raise_for_status()
    return str(answer.json()["data"][0]["id"])
