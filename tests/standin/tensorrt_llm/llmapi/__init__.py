"""STAND-IN for tensorrt_llm.llmapi (LLM API, 1.2.1): LLM, SamplingParams, KvCacheConfig, RequestError.

Mirrors, from the 1.2.1 sources: `SamplingParams` (tensorrt_llm/sampling_params.py) is
`@dataclass(slots=True, kw_only=True)`; `Logprob` and `CompletionOutput` (tensorrt_llm/executor/result.py)
are `@dataclass(slots=True)`; the streamed result (GenerationResult/RequestOutput) has `abort()`, the
method `aborted()` and the properties `finished`, `request_id`, `prompt_token_ids`, `outputs`;
`LLM.__init__` (tensorrt_llm/llmapi/llm.py) takes its named arguments and refuses unknown keyword
arguments; a prompt over `max_num_tokens` raises `RequestError` ("The sum of prompt length (N), query
length (0) should not exceed max_num_tokens (M)"), and a per-request failure reported by the
executor arrives as `RequestError(error_msg)` (tensorrt_llm/executor/executor.py,
`_handle_background_error`). TorchSampler, the 1.2.1 default sampler, ignores repetition, presence
and frequency penalties and the per-request seed: so does the stand-in.

Reproduces too: generate_async needs a running event loop and an explicit end_id when the tokenizer
is skipped; `token_ids_diff` may hold several tokens; the end_id token is left out of the output
while stop tokens are kept only with include_stop_str_in_output; leaving the `async for` does NOT
abort (the request keeps its slot), only `abort()` does; "LLM is shutting down".
Guided decoding (tensorrt_llm/sampling_params.py `GuidedDecodingParams`, llmapi/llm_args.py
`guided_decoding_backend: Optional[Literal["xgrammar", "llguidance"]]`, _torch/pyexecutor/_util.py
`get_guided_decoding_config`): the params are a `@dataclass(slots=True, kw_only=True)` of json, regex,
grammar, json_object and structural_tag, of which at most one may be set; a backend other than those two
is refused; a backend needs the LLM's tokenizer (the real executor asserts it: skip_tokenizer_init=True
fails at start-up). A request carrying guides to an LLM built without a backend is refused with ValueError
(strict by choice: the adapters never send one). The toy model does not follow the guides; it records them
(`standin_guided`).
Every class has `__slots__`, so code that sets a name the real class lacks fails here too. Names
starting with `standin_` are test hooks with no counterpart in the real package.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from tensorrt_llm._toy import ToySequence

TOKENS_PER_ITERATION = 2  # like speculative decoding: one iteration may carry several tokens
STEP_SECONDS = 0.005


class RequestError(RuntimeError):
    """The error one request failed with (tensorrt_llm/executor/utils.py)."""


@dataclass(slots=True)
class Logprob:
    """Holds logprob and vocab rank for a token."""

    logprob: float
    rank: int | None = None


@dataclass(slots=True, kw_only=True)
class KvCacheConfig:
    """The few KvCacheConfig fields the adapters set (a pydantic model in the real package)."""

    free_gpu_memory_fraction: float | None = None
    enable_block_reuse: bool = True


@dataclass(slots=True, kw_only=True)
class GuidedDecodingParams:
    """Guided decoding parameters; only one of the fields may be effective (tensorrt_llm/sampling_params.py)."""

    json: str | dict[str, Any] | None = None
    regex: str | None = None
    grammar: str | None = None
    json_object: bool = False
    structural_tag: str | None = None

    def _validate(self) -> None:
        num_guides = sum(bool(getattr(self, name)) for name in self.__slots__)
        if num_guides > 1:
            raise ValueError(f"Only one guide can be used for a request, but got {num_guides}.")


GUIDED_DECODING_BACKENDS = ("xgrammar", "llguidance")


@dataclass(slots=True, kw_only=True)
class SamplingParams:
    """The 1.2.1 fields the adapters may set; beam search is left out."""

    end_id: int | None = None
    pad_id: int | None = None
    max_tokens: int = 32
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    n: int = 1
    best_of: int | None = None
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
    exclude_input_from_output: bool = True
    guided_decoding: GuidedDecodingParams | None = None
    ignore_eos: bool = False
    detokenize: bool = True

    def __post_init__(self) -> None:
        if self.pad_id is None:
            self.pad_id = self.end_id
        self.best_of = self.best_of or self.n
        if self.top_p is not None and not 0 <= self.top_p <= 1:
            raise ValueError(f"require 0 <= top_p <= 1, got top_p={self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"require top_k >= 0, got top_k={self.top_k}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"require temperature >= 0, got temperature={self.temperature}")
        if self.guided_decoding is not None:
            self.guided_decoding._validate()


FinishName = Literal["stop", "length", "timeout", "cancelled"]


@dataclass(slots=True)
class CompletionOutput:
    """One sequence of a request's output; `token_ids` is cumulative, `token_ids_diff` the new part."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    cumulative_logprob: float | None = None
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    finish_reason: FinishName | None = None
    stop_reason: int | str | None = None
    _last_token_ids_len: int = field(default=0, init=False, repr=False)
    _last_logprobs_len: int = field(default=0, init=False, repr=False)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def token_ids_diff(self) -> list[int]:
        return self.token_ids[self._last_token_ids_len:]

    @property
    def logprobs_diff(self) -> list[dict[int, Logprob]]:
        return self.logprobs[self._last_logprobs_len:]


Iteration = tuple[list[int], "FinishName | None", "int | None"]


class RequestOutput:
    """The streamed result of generate_async: iterate it with `async for`; `abort()` cancels."""

    __slots__ = ("_aborted", "_done", "_id", "_iterations", "_outputs", "_params", "_prompt_token_ids")

    def __init__(self, request_id: int, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self._id = request_id
        self._prompt_token_ids = prompt_token_ids
        self._outputs = [CompletionOutput(0)]
        self._done = False
        self._aborted = False
        self._params = params
        self._iterations: asyncio.Queue[Iteration | BaseException] = asyncio.Queue()

    @property
    def request_id(self) -> int:
        return self._id

    @property
    def prompt_token_ids(self) -> list[int]:
        return self._prompt_token_ids

    @property
    def outputs(self) -> list[CompletionOutput]:
        return self._outputs

    @property
    def finished(self) -> bool:
        return self._done

    def abort(self) -> None:
        self._aborted = True

    def aborted(self) -> bool:
        return self._aborted

    def __aiter__(self) -> RequestOutput:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._done:
            raise StopAsyncIteration
        item = await self._iterations.get()
        if isinstance(item, BaseException):
            raise item
        new, reason, stop_reason = item
        out = self._outputs[0]
        out._last_token_ids_len, out._last_logprobs_len = len(out.token_ids), len(out.logprobs)
        out.token_ids += new
        if self._params.logprobs:
            out.logprobs += [{t: Logprob(-0.25, 1)} for t in new]
        if reason is not None:
            self._done, out.finish_reason, out.stop_reason = True, reason, stop_reason
        return self


_ALLOWED_ARGS = {"max_batch_size", "max_seq_len", "max_input_len", "max_num_tokens", "kv_cache_config",
                 "max_beam_width", "enable_chunked_prefill", "guided_decoding_backend"}


class LLM:
    """STAND-IN LLM: the toy model stepping every request in flight on the event loop."""

    __slots__ = (
        "_ids",
        "_shutting_down",
        "_tasks",
        "args",
        "standin_aborted_ids",
        "standin_active",
        "standin_fail_next_request",
        "standin_guided",
        "standin_max_num_tokens",
        "standin_seeds",
        "standin_skip_tokenizer_init",
        "standin_vocab_size",
    )

    standin_last: ClassVar[LLM | None] = None

    def __init__(self, model: str, tokenizer: str | None = None, tokenizer_mode: str = "auto",
                 skip_tokenizer_init: bool = False, trust_remote_code: bool = False,
                 tensor_parallel_size: int = 1, dtype: str = "auto", revision: str | None = None,
                 tokenizer_revision: str | None = None, **kwargs: Any) -> None:
        unknown = set(kwargs) - _ALLOWED_ARGS
        if unknown:  # the real LlmArgs is a pydantic model that forbids extra fields
            raise ValueError(f"unknown LLM arguments: {sorted(unknown)}")
        backend = kwargs.get("guided_decoding_backend")
        if backend is not None and backend not in GUIDED_DECODING_BACKENDS:  # a Literal field of LlmArgs
            raise ValueError(f"guided_decoding_backend: Input should be 'xgrammar' or 'llguidance', got {backend!r}")
        if backend is not None and skip_tokenizer_init and tokenizer is None:
            raise AssertionError("assert tokenizer is not None")  # get_guided_decoding_config, at executor start
        config = json.loads((Path(model) / "config.json").read_text())
        self.args = dict(kwargs, tensor_parallel_size=tensor_parallel_size, dtype=dtype)
        self.standin_vocab_size = int(config["vocab_size"])
        self.standin_skip_tokenizer_init = skip_tokenizer_init
        self.standin_max_num_tokens = int(kwargs.get("max_num_tokens") or 8192)
        self.standin_active: dict[int, RequestOutput] = {}  # requests holding a batch slot
        self.standin_aborted_ids: list[int] = []
        self.standin_fail_next_request: str | None = None  # the next request fails with RequestError(this)
        self.standin_seeds = random.Random()  # TorchSampler 1.2.1 has no per-request seed
        self.standin_guided: list[GuidedDecodingParams] = []  # every request's guides, in arrival order
        self._ids = itertools.count(1)
        self._shutting_down = False
        self._tasks: set[asyncio.Task[None]] = set()
        LLM.standin_last = self

    def generate_async(self, inputs: list[int] | dict[str, list[int]], sampling_params: SamplingParams | None = None,
                       lora_request: Any = None, prompt_adapter_request: Any = None,
                       streaming: bool = False) -> RequestOutput:
        if self._shutting_down:
            raise RuntimeError("LLM is shutting down")
        asyncio.get_running_loop()  # RuntimeError without a running loop, as in the real one
        prompt = list(inputs["prompt_token_ids"] if isinstance(inputs, dict) else inputs)
        params = sampling_params or SamplingParams()
        if params.end_id is None and self.standin_skip_tokenizer_init:
            raise ValueError("tokenizer is required to reset end_id if it is None, or you can explicitly "
                             "specify the end_id for sampling_params")
        if params.guided_decoding is not None:
            if self.args.get("guided_decoding_backend") is None:
                raise ValueError("guided decoding params given, but the LLM was built without guided_decoding_backend")
            self.standin_guided.append(params.guided_decoding)
        if len(prompt) > self.standin_max_num_tokens:
            raise RequestError(f"The sum of prompt length ({float(len(prompt))}), query length (0) should not "
                               f"exceed max_num_tokens ({self.standin_max_num_tokens})")
        result = RequestOutput(next(self._ids), prompt, params)
        self.standin_active[result.request_id] = result
        task = asyncio.get_running_loop().create_task(self._run(result))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return result

    def shutdown(self) -> None:
        self._shutting_down = True
        for result in list(self.standin_active.values()):
            result.abort()

    async def _run(self, result: RequestOutput) -> None:
        params = result._params
        if self.standin_fail_next_request is not None:
            message, self.standin_fail_next_request = self.standin_fail_next_request, None
            self.standin_active.pop(result.request_id, None)
            result._iterations.put_nowait(RequestError(message))
            return
        seq = ToySequence(result.prompt_token_ids, self.standin_vocab_size,
                          -1 if params.ignore_eos else params.end_id or 0, params.max_tokens,
                          _samples_greedily(params), self.standin_seeds.randrange(1 << 30), params.min_tokens or 0,
                          tuple(params.stop_token_ids or ()))
        try:
            await self._step_until_done(result, seq, params)
        finally:
            self.standin_active.pop(result.request_id, None)

    async def _step_until_done(self, result: RequestOutput, seq: ToySequence, params: SamplingParams) -> None:
        while True:
            await asyncio.sleep(STEP_SECONDS)
            if result.aborted():
                self.standin_aborted_ids.append(result.request_id)
                result._iterations.put_nowait(([], "cancelled", None))
                return
            new = self._iteration(seq, params)
            result._iterations.put_nowait((new, *_finish(seq)))
            if seq.finished:
                return

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


def _samples_greedily(params: SamplingParams) -> bool:
    """TorchSampler's choice: greedy unless temperature, top_k or top_p asks for sampling."""
    unset = params.temperature is None and params.top_k is None and params.top_p is None
    return unset or params.temperature == 0.0 or params.top_k == 1


def _finish(seq: ToySequence) -> tuple[FinishName | None, int | None]:
    if seq.finished == "end":
        return "stop", None
    if seq.finished == "stop":
        return "stop", seq.generated[-1]
    return ("length", None) if seq.finished == "length" else (None, None)
