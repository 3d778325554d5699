"""STAND-IN for tensorrt_llm.bindings.executor (1.2.1 C++ bindings): Executor, Request, SamplingConfig, responses.

The real classes are C++ binding objects: they take keyword arguments of these names and refuse
new attributes, so every class here has `__slots__`. Names starting with `standin_` are test hooks.
Reproduces: enqueue_request returns an id; a background loop steps every request in flight
(in-flight batching); await_responses(timeout=...) returns responses of all requests, routed by
`request_id`; await_responses(id) on an exhausted id WITHOUT a timeout blocks forever; streaming
results carry new tokens only; END_ID is left out of the output, stop words are kept;
cancel_request ends a request with CANCELLED.
"""

from __future__ import annotations

import enum
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from tensorrt_llm._toy import ToySequence, read_vocab_size

STEP_SECONDS = 0.002


class FinishReason(enum.Enum):
    NOT_FINISHED = 0
    END_ID = 1
    STOP_WORDS = 2
    LENGTH = 3
    TIMED_OUT = 4
    CANCELLED = 5


class ModelType(enum.Enum):
    DECODER_ONLY = 0


@dataclass(slots=True)
class SamplingConfig:
    beam_width: int = 1
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    temperature: float | None = None
    min_tokens: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    min_p: float | None = None
    num_return_sequences: int | None = None



def _samples_greedily(config: SamplingConfig) -> bool:
    return config.top_k == 1 or (not config.top_k and not config.top_p)


@dataclass(slots=True)
class OutputConfig:
    return_log_probs: bool = False
    return_context_logits: bool = False
    return_generation_logits: bool = False
    exclude_input_from_output: bool = False


class Request:
    __slots__ = (
        "bad_words",
        "end_id",
        "input_token_ids",
        "max_tokens",
        "output_config",
        "pad_id",
        "sampling_config",
        "stop_words",
        "streaming",
    )

    def __init__(self, input_token_ids: list[int], max_tokens: int, *, streaming: bool = False,
                 sampling_config: SamplingConfig | None = None, output_config: OutputConfig | None = None,
                 end_id: int | None = None, pad_id: int | None = None, stop_words: list[list[int]] | None = None,
                 bad_words: list[list[int]] | None = None) -> None:
        self.input_token_ids = list(input_token_ids)
        self.max_tokens = max_tokens
        self.streaming = streaming
        self.sampling_config = sampling_config or SamplingConfig()
        self.output_config = output_config or OutputConfig()
        self.end_id, self.pad_id = end_id, pad_id
        self.stop_words, self.bad_words = stop_words, bad_words


@dataclass(slots=True)
class Result:
    is_final: bool
    output_token_ids: list[list[int]]
    finish_reasons: list[FinishReason]
    log_probs: list[list[float]] = field(default_factory=list)
    sequence_index: int = 0


class Response:
    __slots__ = ("error_msg", "request_id", "result")

    def __init__(self, request_id: int, result: Result | None = None, error_msg: str = "") -> None:
        self.request_id, self.result, self.error_msg = request_id, result, error_msg

    def has_error(self) -> bool:
        return bool(self.error_msg)


@dataclass(slots=True)
class ExecutorConfig:
    max_batch_size: int | None = None
    max_beam_width: int = 1
    kv_cache_free_gpu_memory_fraction: float | None = None


@dataclass(slots=True)
class _Active:
    request: Request
    seq: ToySequence
    cancelled: bool = False


class Executor:
    """The toy model behind the Executor API, stepped by a background thread."""

    __slots__ = (
        "_active",
        "_all",
        "_by_id",
        "_cv",
        "_ids",
        "_leader",
        "_max_input_len",
        "_shutdown",
        "_thread",
        "_vocab",
        "standin_cancelled_ids",
    )

    def __init__(self, model_path: str | Path, model_type: ModelType, executor_config: ExecutorConfig,
                 max_input_len: int = 1 << 30, leader: bool = True) -> None:
        self._vocab = read_vocab_size(str(model_path))
        self._max_input_len = max_input_len
        self._leader = leader
        self._ids = itertools.count(1)
        self._active: dict[int, _Active] = {}
        self._all: deque[Response] = deque()
        self._by_id: dict[int, deque[Response]] = {}
        self._cv = threading.Condition()
        self._shutdown = False
        self.standin_cancelled_ids: list[int] = []
        self._thread = threading.Thread(target=self._loop, daemon=True, name="standin-executor")
        self._thread.start()

    def can_enqueue_requests(self) -> bool:
        return self._leader and not self._shutdown

    def enqueue_request(self, request: Request) -> int:
        if self._shutdown:
            raise RuntimeError("Shutdown called")
        request_id = next(self._ids)
        if len(request.input_token_ids) > self._max_input_len:
            self._respond(Response(request_id, error_msg=f"Prompt length ({len(request.input_token_ids)}) "
                                   f"exceeds maximum input length ({self._max_input_len})."))
            return request_id
        sc = request.sampling_config
        stops = tuple(w[0] for w in request.stop_words or [] if len(w) == 1)
        seq = ToySequence(request.input_token_ids, self._vocab, -1 if request.end_id is None else request.end_id,
                          request.max_tokens, _samples_greedily(sc), sc.seed, sc.min_tokens or 0, stops)
        with self._cv:
            self._active[request_id] = _Active(request, seq)
        return request_id

    def enqueue_requests(self, requests: list[Request]) -> list[int]:
        return [self.enqueue_request(r) for r in requests]

    def cancel_request(self, id: int) -> None:
        with self._cv:
            if id in self._active:
                self._active[id].cancelled = True

    def await_responses(self, id: Any = None, timeout: timedelta | None = None) -> list[Response]:
        if isinstance(id, timedelta):  # the await_responses(timeout) overload
            id, timeout = None, id
        deadline = None if timeout is None else time.monotonic() + timeout.total_seconds()
        with self._cv:
            source = self._all if id is None else self._by_id.setdefault(id, deque())
            while not source and not self._shutdown:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return []
                self._cv.wait(remaining)  # no timeout and nothing coming: blocks forever, as documented
            taken = list(source)
            source.clear()
            for response in taken:  # a response is delivered once, by whichever call takes it
                other = self._by_id.get(response.request_id) if id is None else self._all
                if other is not None and response in other:
                    other.remove(response)
            return taken

    def get_num_responses_ready(self, id: int | None = None) -> int:
        with self._cv:
            return len(self._all) if id is None else len(self._by_id.get(id, ()))

    def shutdown(self) -> None:
        with self._cv:
            self._shutdown = True
            self._cv.notify_all()
        self._thread.join(timeout=5)

    def _respond(self, response: Response) -> None:
        with self._cv:
            self._all.append(response)
            self._by_id.setdefault(response.request_id, deque()).append(response)
            self._cv.notify_all()

    def _loop(self) -> None:
        while not self._shutdown:
            time.sleep(STEP_SECONDS)
            with self._cv:
                active = list(self._active.items())
            for request_id, entry in active:
                self._step(request_id, entry)

    def _step(self, request_id: int, entry: _Active) -> None:
        if entry.cancelled:
            self.standin_cancelled_ids.append(request_id)
            self._finish(request_id, [], FinishReason.CANCELLED, entry)
            return
        token = entry.seq.step()
        new = [] if token is None else [token]
        if entry.seq.finished is None:
            self._respond(Response(request_id, self._result(False, new, FinishReason.NOT_FINISHED, entry)))
            return
        reason = {"end": FinishReason.END_ID, "stop": FinishReason.STOP_WORDS}.get(entry.seq.finished,
                                                                                   FinishReason.LENGTH)
        self._finish(request_id, new, reason, entry)

    def _finish(self, request_id: int, new: list[int], reason: FinishReason, entry: _Active) -> None:
        with self._cv:
            self._active.pop(request_id, None)
        self._respond(Response(request_id, self._result(True, new, reason, entry)))

    @staticmethod
    def _result(final: bool, new: list[int], reason: FinishReason, entry: _Active) -> Result:
        logprobs = [[-0.5] * len(new)] if entry.request.output_config.return_log_probs else []
        return Result(final, [new], [reason], logprobs)

    @property
    def standin_active_requests(self) -> int:
        with self._cv:
            return len(self._active)
