"""Owns the device: the KV cache, one step's forward (eager, or a captured CUDA graph for decodes), sampling.

The runner only computes; what runs each step is the scheduler's decision. Its one device→host
transfer per step is the sampled ids (and logprobs when asked).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import torch

from splitserve.generator.engines.native.attention import AttentionMetadata
from splitserve.generator.engines.native.cuda_graphs import DecodeGraphs
from splitserve.generator.engines.native.model import DecoderModel, KVCache
from splitserve.generator.engines.native.sampler import Sampler, SamplerOutput
from splitserve.generator.engines.native.scheduler import SchedulerOutput
from splitserve.generator.engines.native.step_inputs import StepInputs, build_step_inputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepSamples:
    """One step's sampled tokens on the host, one entry per chunk that samples (in chunk order)."""

    token_ids: list[int]
    logprobs: list[float] | None
    top: list[list[tuple[int, float]]] | None


class StepBroadcast(Protocol):
    """Sends each step's inputs to the other tensor-parallel ranks, which run the same forward."""

    def send(self, inputs: StepInputs, use_graph: bool) -> None: ...

    def fail(self, error: BaseException) -> None:
        """The forward failed after `send`: the other ranks' collectives no longer pair with ours."""


@dataclass(frozen=True)
class PendingStep:
    """A launched step: its samples being copied to (pinned) host memory, and the event that marks the end."""

    samples: SamplerOutput | None
    done: torch.cuda.Event | None


def _copy_to_host(samples: SamplerOutput) -> PendingStep:
    """Non-blocking device→host copies (into pinned memory), then an event to wait on instead of a sync."""
    if samples.token_ids.device.type != "cuda":
        return PendingStep(samples, None)
    host = lambda t: None if t is None else t.to("cpu", non_blocking=True)  # noqa: E731
    copied = SamplerOutput(samples.token_ids.to("cpu", non_blocking=True), host(samples.logprobs),
                           host(samples.top_ids), host(samples.top_logprobs))
    done = torch.cuda.Event()
    done.record()
    return PendingStep(copied, done)


def allocate_kv_cache(model: DecoderModel, num_blocks: int, block_size: int) -> list[KVCache]:
    """Per layer a K and a V tensor [num_blocks + 1, block_size, KV heads, D]; the extra block is scratch."""
    weights = model.weights.embed
    shape = (num_blocks + 1, block_size, model.num_kv_heads, model.config.head_dim)
    return [(torch.zeros(shape, dtype=weights.dtype, device=weights.device),
             torch.zeros(shape, dtype=weights.dtype, device=weights.device)) for _ in range(model.config.num_layers)]


def kv_bytes_per_token(model: DecoderModel) -> int:
    return 2 * model.config.num_layers * model.num_kv_heads * model.config.head_dim * model.weights.embed.element_size()


class ModelRunner:
    """Runs scheduled steps through the model and the sampler."""

    def __init__(self, model: DecoderModel, kv_caches: list[KVCache], block_size: int, max_num_seqs: int,
                 max_blocks_per_seq: int, use_cuda_graphs: bool, broadcast: StepBroadcast | None = None) -> None:
        self.model = model
        self._broadcast = broadcast
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = model.weights.embed.device
        self.sampler = Sampler(model.config.vocab_size, self.device)
        self._graphs: DecodeGraphs | None = None
        if use_cuda_graphs:
            scratch = (kv_caches[0][0].shape[0] - 1) * block_size
            self._graphs = DecodeGraphs(self._decode_logits, max_num_seqs, max_blocks_per_seq, scratch, self.device)

    def capture_graphs(self) -> None:
        if self._graphs is not None:
            self._graphs.capture()
            log.info("captured decode CUDA graphs for batch sizes %s", self._graphs.buckets)

    def execute(self, output: SchedulerOutput) -> StepSamples:
        """Runs the step and returns the sampled tokens of the chunks that end their sequence's tokens."""
        return self.finish(self.launch(output))

    @torch.inference_mode()
    def launch(self, output: SchedulerOutput) -> PendingStep:
        """Queues the step's forward, sampling and the copy of its tokens to the host; returns without waiting."""
        inputs = build_step_inputs(output.chunks, self.block_size)
        use_graph = self._graphs is not None and output.is_decode_only and self._graphs.fits(len(output.chunks))
        if self._broadcast is None:
            logits = self.forward(inputs, use_graph)
        else:
            self._broadcast.send(inputs, use_graph)
            try:
                logits = self.forward(inputs, use_graph)
            except BaseException as error:
                self._broadcast.fail(error)
                raise
        seqs = [chunk.seq for chunk in output.chunks if chunk.samples]
        if not seqs:
            return PendingStep(None, None)
        return _copy_to_host(self.sampler(logits, seqs))

    def finish(self, pending: PendingStep) -> StepSamples:
        """Waits for a launched step (releasing the GIL meanwhile) and returns its tokens."""
        if pending.samples is None:
            return StepSamples([], None, None)
        if pending.done is not None:
            pending.done.synchronize()
        return _to_host(pending.samples)

    def forward(self, inputs: StepInputs, use_graph: bool) -> torch.Tensor:
        """The logits of the step's sampling rows: a captured decode graph's replay, or the eager forward."""
        if use_graph:
            assert self._graphs is not None  # the caller chose the graph path because there are graphs
            return self._graphs.run(inputs)
        return self._eager_logits(inputs)

    def _eager_logits(self, inputs: StepInputs) -> torch.Tensor:
        to = lambda array: torch.from_numpy(array).to(self.device, non_blocking=True)  # noqa: E731
        meta = AttentionMetadata(to(inputs.slot_mapping), to(inputs.query_start), to(inputs.seq_lens),
                                 to(inputs.block_tables), inputs.max_query_len, inputs.max_seq_len)
        hidden = self.model.forward(to(inputs.input_ids), to(inputs.positions), self.kv_caches, meta)
        return self.model.logits(hidden[to(inputs.sample_rows)])

    def _decode_logits(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        return self.model.logits(self.model.forward(input_ids, positions, self.kv_caches, meta))


def _to_host(samples: SamplerOutput) -> StepSamples:
    token_ids = samples.token_ids.tolist()
    logprobs = None if samples.logprobs is None else samples.logprobs.tolist()
    top = None
    if samples.top_ids is not None and samples.top_logprobs is not None:
        ids, values = samples.top_ids.tolist(), samples.top_logprobs.tolist()
        top = [list(zip(row_ids, row_values, strict=True)) for row_ids, row_values in zip(ids, values, strict=True)]
    return StepSamples(token_ids, logprobs, top)
