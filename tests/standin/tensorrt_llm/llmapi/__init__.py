"""STAND-IN for tensorrt_llm.llmapi (LLM API, 1.x): LLM, SamplingParams, KvCacheConfig, RequestError.

Reproduces: generate_async needs a running event loop and an explicit end_id when the tokenizer is
skipped; streamed outputs are cumulative (`token_ids`) with a per-iteration `token_ids_diff` that
may hold several tokens; finish_reason in {stop, length, cancelled}; the end_id token is left out of
the output while stop tokens are kept only with include_stop_str_in_output; leaving the `async for`
does NOT abort (the request keeps its slot) — only `abort()` does; "LLM is shutting down".
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tensorrt_llm._toy import ToySequence

TOKENS_PER_ITERATION = 2  # like speculative decoding: one iteration may carry several tokens
STEP_SECONDS = 0.005


class RequestError(RuntimeError):
    """The error raised when one request fails."""


class Logprob(NamedTuple):
    logprob: float
    rank: int | None = None


@dataclass
class KvCacheConfig:
    free_gpu_memory_fraction: float | None = None
    enable_block_reuse: bool = True


@dataclass
class SamplingParams:
    end_id: int | None = None
    pad_id: int | None = None
    max_tokens: int = 32
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    n: int = 1
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    temperature: float | None = None
    min_tokens: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    min_p: float | None = None
    logprobs: int | None = None
    ignore_eos: bool = False
    exclude_input_from_output: bool = True
    detokenize: bool = True

    def __post_init__(self) -> None:
        if self.top_p is not None and not 0 <= self.top_p <= 1:
            raise ValueError(f"require 0 <= top_p <= 1, got top_p={self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"require top_k >= 0, got top_k={self.top_k}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"require temperature >= 0, got temperature={self.temperature}")

    @property
    def greedy(self) -> bool:
        return self.temperature is None and self.top_k is None and self.top_p is None


@dataclass
class CompletionOutput:
    index: int = 0
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    _last_token_ids_len: int = 0
    _last_logprobs_len: int = 0

    @property
    def token_ids_diff(self) -> list[int]:
        return self.token_ids[self._last_token_ids_len:]

    @property
    def logprobs_diff(self) -> list[dict[int, Logprob]]:
        return self.logprobs[self._last_logprobs_len:]


class RequestOutput:
    """The streamed result of generate_async: iterate it with `async for`; `abort()` cancels."""

    def __init__(self, request_id: int, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.outputs = [CompletionOutput()]
        self.finished = False
        self.params = params
        self.aborted = False
        self._iterations: asyncio.Queue[tuple[list[int], str | None, Any] | BaseException] = asyncio.Queue()

    def abort(self) -> None:
        self.aborted = True

    def __aiter__(self) -> RequestOutput:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        item = await self._iterations.get()
        if isinstance(item, BaseException):
            raise item
        new, reason, stop_reason = item
        out = self.outputs[0]
        out._last_token_ids_len, out._last_logprobs_len = len(out.token_ids), len(out.logprobs)
        out.token_ids += new
        if self.params.logprobs:
            out.logprobs += [{t: Logprob(-0.25, 1)} for t in new]
        if reason is not None:
            self.finished, out.finish_reason, out.stop_reason = True, reason, stop_reason
        return self


_ALLOWED_ARGS = {"max_batch_size", "max_seq_len", "max_input_len", "max_num_tokens", "kv_cache_config",
                 "max_beam_width", "enable_chunked_prefill"}


class LLM:
    """STAND-IN LLM: the toy model stepping every request in flight on the event loop."""

    def __init__(self, model: str, tokenizer: str | None = None, skip_tokenizer_init: bool = False,
                 tensor_parallel_size: int = 1, dtype: str = "auto", **kwargs: Any) -> None:
        unknown = set(kwargs) - _ALLOWED_ARGS
        if unknown:
            raise ValueError(f"unknown LLM arguments: {sorted(unknown)}")
        config = json.loads((Path(model) / "config.json").read_text())
        self.vocab_size = int(config["vocab_size"])
        self.args = dict(kwargs, tensor_parallel_size=tensor_parallel_size, dtype=dtype)
        self.skip_tokenizer_init = skip_tokenizer_init
        self.max_num_tokens = int(kwargs.get("max_num_tokens") or 8192)
        self.active: dict[int, RequestOutput] = {}  # requests holding a batch slot
        self.aborted: list[int] = []
        self.fail_next_request: str | None = None  # test hook: the next request fails with RequestError
        self._ids = itertools.count(1)
        self._shutting_down = False
        self._tasks: set[asyncio.Task[None]] = set()
        LLM.last = self

    last: LLM | None = None

    def generate_async(self, inputs: list[int] | dict[str, list[int]], sampling_params: SamplingParams | None = None,
                       streaming: bool = False) -> RequestOutput:
        if self._shutting_down:
            raise RuntimeError("LLM is shutting down")
        asyncio.get_running_loop()  # RuntimeError without a running loop, as in the real one
        prompt = list(inputs["prompt_token_ids"] if isinstance(inputs, dict) else inputs)
        params = sampling_params or SamplingParams()
        if params.end_id is None and self.skip_tokenizer_init:
            raise ValueError("end_id is required when skip_tokenizer_init=True (no tokenizer to take it from)")
        if len(prompt) > self.max_num_tokens:
            raise ValueError(f"The sum of prompt length ({len(prompt)}) should not exceed "
                             f"max_num_tokens ({self.max_num_tokens})")
        result = RequestOutput(next(self._ids), prompt, params)
        self.active[result.request_id] = result
        task = asyncio.get_running_loop().create_task(self._run(result))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return result

    def shutdown(self) -> None:
        self._shutting_down = True
        for result in list(self.active.values()):
            result.abort()

    async def _run(self, result: RequestOutput) -> None:
        params = result.params
        if self.fail_next_request is not None:
            message, self.fail_next_request = self.fail_next_request, None
            self.active.pop(result.request_id, None)
            result._iterations.put_nowait(RequestError(message))
            return
        seq = ToySequence(result.prompt_token_ids, self.vocab_size, -1 if params.ignore_eos else params.end_id or 0,
                          params.max_tokens, params.greedy, params.seed, params.min_tokens or 0,
                          tuple(params.stop_token_ids or ()))
        try:
            while True:
                await asyncio.sleep(STEP_SECONDS)
                if result.aborted:
                    self.aborted.append(result.request_id)
                    result._iterations.put_nowait(([], "cancelled", None))
                    return
                new = self._iteration(seq, params)
                result._iterations.put_nowait((new, *_finish(seq)))
                if seq.finished:
                    return
        finally:
            self.active.pop(result.request_id, None)


    @staticmethod
    def _iteration(seq: ToySequence, params: SamplingParams) -> list[int]:
        new: list[int] = []
        for _ in range(TOKENS_PER_ITERATION):
            token = seq.step()
            kept = seq.finished != "stop" or params.include_stop_str_in_output
            if token is not None and kept:
                new.append(token)
            if seq.finished:
                break
        return new


def _finish(seq: ToySequence) -> tuple[str | None, int | None]:
    if seq.finished == "end":
        return "stop", None
    if seq.finished == "stop":
        return "stop", seq.generated[-1]
    return ("length", None) if seq.finished == "length" else (None, None)
