"""The benchmark engine: token IDs at a modelled step time, for measuring the serving layer without a GPU.

Never the default. It runs in-flight batching on an asyncio step loop: each step serves up to
`max_batch_size` sequences and lasts `fixed_s + per_seq_s * batch`; a request that arrives mid-step
joins at the next step, and a cancelled one leaves the batch at the next step. Steps keep the
modelled device's clock, not the event loop's: a busy loop delays delivery, not the device.

Calibration (../shared/TRTLLM.md): trtllm-bench reports 28,312 output tok/s for Llama-3.1-8B FP8 on
one H100 at ISL/OSL 128/128. A decode step of an 8B FP8 model at small batch is bound by reading the
~8 GB of weights (3.35 TB/s → ~2.4 ms), plus launch and sampling overhead: we take 4 ms fixed. At a
batch of 256 the step must then last 256 / 28,312 s = 9.04 ms, which leaves 19.7 µs per sequence.
Prefill is folded into that figure (the published number counts output tokens over the whole run):
a joining request's first token comes out at the end of its first step.

Tokens cycle deterministically through ordinary word tokens of the served tokenizer (" the",
" house", …), so detokenization downstream does real work and the text is readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from splitserve.common.errors import EngineUnavailable, Overloaded
from splitserve.generator.engine import HealthListener
from splitserve.link.types import (
    EngineCapabilities,
    EngineInfo,
    EngineLoad,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    TokenOutput,
)

if TYPE_CHECKING:
    from splitserve.generator.config import GeneratorConfig

MAX_WORD_TOKENS = 1024
_WORD = re.compile(r"^Ġ[a-z]{3,}$")  # byte-level BPE marks a leading space with "Ġ"


@dataclass(frozen=True)
class StepModel:
    """Step time of one in-flight batching iteration: fixed cost plus a cost per running sequence."""

    fixed_s: float = 4.0e-3
    per_seq_s: float = 19.7e-6

    def step_seconds(self, batch: int) -> float:
        return self.fixed_s + self.per_seq_s * batch


H100_LLAMA_8B_FP8 = StepModel()


@dataclass
class _Sequence:
    """One request in the engine: what it will emit and what the consumer has not taken yet."""

    request: GenerationRequest
    max_new_tokens: int
    offset: int
    arrived: float  # event-loop time of admission
    pending: list[int] = field(default_factory=list)
    generated: int = 0
    finish: FinishReason | None = None
    stop_token_id: int | None = None
    cancelled: bool = False
    error: Exception | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class BenchEngine:
    """Emits word tokens at the modelled step time; in-flight batching, no weights."""

    def __init__(self, config: GeneratorConfig, on_health: HealthListener,
                 step_model: StepModel = H100_LLAMA_8B_FP8) -> None:
        self._config = config
        self._on_health = on_health
        self._model = step_model
        self._words: list[int] = []
        self._vocab_size = 0
        self._eos: tuple[int, ...] = ()
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self.steps = 0

    @property
    def info(self) -> EngineInfo:
        return self._config.engine_info("bench", self._vocab_size, self._eos, EngineCapabilities())

    async def start(self) -> None:
        tokenizer = await asyncio.to_thread(_load_tokenizer, self._config.model_path)
        self._vocab_size = len(tokenizer)
        eos = tokenizer.eos_token_id
        self._eos = (int(eos),) if eos is not None else ()
        self._words = word_token_ids(tokenizer)
        self._loop_task = asyncio.create_task(self._step_loop(), name="bench-engine-steps")

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        seq = self._admit(request)
        try:
            while True:
                await seq.ready.wait()
                seq.ready.clear()
                if seq.error is not None:
                    raise seq.error
                # Everything produced since the last pull goes out as one chunk: a slow consumer
                # gets fewer, larger chunks instead of a backlog.
                tokens, seq.pending = [TokenOutput(t) for t in seq.pending], []
                if seq.finish is not None:
                    yield GenerationChunk(tokens, seq.finish, seq.stop_token_id, len(request.prompt_token_ids),
                                          seq.generated, request.sampling.seed)
                    return
                if tokens:
                    yield GenerationChunk(tokens)
        finally:
            seq.cancelled = True  # the step loop drops it at the next step, freeing the slot

    def load(self) -> EngineLoad:
        return EngineLoad(queued_requests=len(self._waiting), running_requests=len(self._running),
                          cache_utilization=len(self._running) / self._config.max_batch_size,
                          max_batch_size=self._config.max_batch_size)

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for seq in [*self._waiting, *self._running]:
            seq.error = EngineUnavailable("generator is shutting down")
            seq.ready.set()

    # -- requests -----------------------------------------------------------------------------------

    def _admit(self, request: GenerationRequest) -> _Sequence:
        if self._loop_task is None:
            raise EngineUnavailable("engine not started")
        limit = self._config.max_batch_size + self._config.max_queued_requests
        if len(self._waiting) + len(self._running) >= limit:
            raise Overloaded(f"generator queue is full ({limit} requests in flight); retry later")
        max_new = request.max_new_tokens or self._config.default_max_new_tokens
        seq = _Sequence(request, max_new, offset=sum(request.prompt_token_ids[:8]),
                        arrived=asyncio.get_running_loop().time())
        self._waiting.append(seq)
        self._wake.set()
        return seq

    # -- the step loop ------------------------------------------------------------------------------

    async def _step_loop(self) -> None:
        """Steps on the modelled device's own clock: each step starts when the previous one ended.

        A device does not wait for the host: when the event loop is busy past a step's end, that
        step's tokens are delivered late and the next steps run back to back until the clock has
        caught up, as a host thread polling a busy GPU would find them. A request joins the first
        step that starts after it arrived, never one that started earlier.
        """
        loop = asyncio.get_running_loop()
        clock = loop.time()
        while True:
            if not self._running and not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                clock = loop.time()
            elif not self._running:  # an idle device starts when the next request arrives
                clock = max(clock, self._waiting[0].arrived)
            self._join_waiting(clock)
            clock += self._model.step_seconds(len(self._running))
            await asyncio.sleep(max(clock - loop.time(), 0.0))
            self._step()

    def _join_waiting(self, step_start: float) -> None:
        self._running = [s for s in self._running if not s.cancelled]
        while self._waiting and len(self._running) < self._config.max_batch_size:
            if self._waiting[0].cancelled:
                self._waiting.popleft()
            elif self._waiting[0].arrived <= step_start:
                self._running.append(self._waiting.popleft())
            else:
                break

    def _step(self) -> None:
        """Emits one token for every running sequence and retires the finished ones."""
        self.steps += 1
        words, still = self._words, []
        for seq in self._running:
            if seq.cancelled:
                continue
            token = words[(seq.offset + seq.generated) % len(words)]
            seq.pending.append(token)
            seq.generated += 1
            if token in seq.request.stop_token_ids:
                seq.finish, seq.stop_token_id = FinishReason.STOP_TOKEN, token
            elif seq.generated >= seq.max_new_tokens:
                seq.finish = FinishReason.LENGTH
            else:
                still.append(seq)
            seq.ready.set()
        self._running = still


def word_token_ids(tokenizer: Any) -> list[int]:
    """Ids of ordinary lower-case words with a leading space, in id order (deterministic)."""
    vocab: dict[str, int] = tokenizer.get_vocab()
    ids = sorted(i for t, i in vocab.items() if _WORD.match(t))[:MAX_WORD_TOKENS]
    if not ids:  # a tokenizer without byte-level BPE word tokens: any non-special ids will do
        specials = set(tokenizer.all_special_ids)
        ids = [i for i in range(min(len(tokenizer), MAX_WORD_TOKENS + len(specials))) if i not in specials]
    return ids


def _load_tokenizer(model_path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)
