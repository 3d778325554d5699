"""STAND-IN for tensorrt_llm.runtime (1.2.1): ModelRunner (Python, static batches) and ModelRunnerCpp.

Mirrors tensorrt_llm/runtime/model_runner.py and model_runner_cpp.py of 1.2.1: both `from_dir`
take a fixed keyword-only list (no **kwargs), ModelRunnerCpp keeps its Executor in `.session` (it has
no `executor` attribute) and its `_check_inputs` raises the limit RuntimeErrors below. Both classes
have `__slots__`, so setting a name the real runner lacks fails here too.
Reproduces: engine limits from the engine dir's config.json (build_config) and the exact
RuntimeError messages of the limit checks; inputs must be List[IntTensor]; the Python
SamplingConfig defaults (max_new_tokens=20, top_k=1, top_p=0.0, temperature=1.0: temperature alone
stays greedy) with unknown keyword arguments silently ignored; streaming yields `output_ids`
[batch, beams, L] (prompt + generated, padded with end_id) and `sequence_lengths` [batch, beams].
ModelRunnerCpp.generate() awaits responses without ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from tensorrt_llm._toy import ToySequence, read_vocab_size
from tensorrt_llm.bindings import executor as trtllm


@dataclass(slots=True)
class SamplingConfig:
    end_id: int
    pad_id: int
    max_new_tokens: int = 20
    num_beams: int = 1
    temperature: float = 1.0
    top_k: int = 1
    top_p: float = 0.0
    repetition_penalty: float = 1.0
    min_length: int = 1
    random_seed: int | None = None
    output_sequence_lengths: bool = False
    return_dict: bool = False

    def update(self, **kwargs: Any) -> None:
        names = {f.name for f in fields(self)}
        for key, value in kwargs.items():
            if key in names:  # unknown keys are silently ignored, as in the real runner
                setattr(self, key, value)


@dataclass(slots=True)
class _Limits:
    max_batch_size: int
    max_input_len: int
    max_seq_len: int


def _read_limits(engine_dir: str) -> _Limits:
    build = json.loads((Path(engine_dir) / "config.json").read_text())["build_config"]
    return _Limits(build["max_batch_size"], build["max_input_len"], build["max_seq_len"])


def _check_inputs(limits: _Limits, lengths: list[int], max_new_tokens: int) -> None:
    if len(lengths) > limits.max_batch_size:
        raise RuntimeError(f"Input batch size ({len(lengths)}) exceeds the engine or specified limit "
                           f"({limits.max_batch_size})")
    longest = max(lengths)
    if longest > limits.max_input_len:
        raise RuntimeError(f"Maximum input length ({longest}) exceeds the engine or specified limit "
                           f"({limits.max_input_len})")
    if longest + max_new_tokens > limits.max_seq_len:
        raise RuntimeError(f"Maximum input length ({longest}) + maximum new tokens ({max_new_tokens}) exceeds the "
                           f"engine or specified limit ({limits.max_seq_len})")


class ModelRunner:
    """STAND-IN Python ModelRunner: static batches, no in-flight batching."""

    __slots__ = ("engine_dir", "limits", "standin_calls", "vocab_size")

    def __init__(self, engine_dir: str) -> None:
        self.engine_dir = engine_dir
        self.limits = _read_limits(engine_dir)
        self.vocab_size = read_vocab_size(engine_dir)
        self.standin_calls: list[dict[str, Any]] = []

    @classmethod
    def from_dir(cls, engine_dir: str, *, max_output_len: int | None = None, lora_dir: list[str] | None = None,
                 rank: int = 0, debug_mode: bool = False, lora_ckpt_source: str = "hf",
                 medusa_choices: list[list[int]] | None = None, stream: Any = None, gpu_weights_percent: float = 1,
                 enable_context_fmha_fp32_acc: bool | None = None,
                 multi_block_mode: bool | None = None) -> ModelRunner:
        return cls(engine_dir)

    def generate(self, batch_input_ids: list[torch.Tensor], sampling_config: SamplingConfig | None = None,
                 streaming: bool = False, **kwargs: Any) -> Any:
        if not all(isinstance(t, torch.Tensor) and t.dtype == torch.int32 for t in batch_input_ids):
            raise TypeError("batch_input_ids must be a List[IntTensor]")
        if sampling_config is None:
            if kwargs.get("end_id") is None or kwargs.get("pad_id") is None:
                raise TypeError("SamplingConfig needs end_id and pad_id")
            sampling_config = SamplingConfig(kwargs["end_id"], kwargs["pad_id"])
        sampling_config.update(**kwargs)
        prompts = [t.tolist() for t in batch_input_ids]
        _check_inputs(self.limits, [len(p) for p in prompts], sampling_config.max_new_tokens)
        self.standin_calls.append({"batch_size": len(prompts), **asdict(sampling_config)})
        steps = self._steps(prompts, sampling_config)
        if streaming:
            return steps
        return list(steps)[-1]

    def _steps(self, prompts: list[list[int]], sc: SamplingConfig) -> Iterator[dict[str, torch.Tensor]]:
        greedy = sc.top_k == 1 or (sc.top_k == 0 and sc.top_p == 0.0)
        seqs = [ToySequence(p, self.vocab_size, sc.end_id, sc.max_new_tokens, greedy, sc.random_seed,
                            max(0, sc.min_length)) for p in prompts]
        width = max(len(p) for p in prompts) + sc.max_new_tokens
        while not all(s.finished for s in seqs):
            for s in seqs:
                if not s.finished:
                    s.step()
            # output_ids: [batch, beams=1, width], sequence_lengths: [batch, beams=1]
            ids = torch.full((len(seqs), 1, width), sc.end_id, dtype=torch.int32)
            for row, s in enumerate(seqs):
                full = s.prompt + s.generated
                ids[row, 0, :len(full)] = torch.tensor(full, dtype=torch.int32)
            lengths = torch.tensor([[len(s.prompt) + len(s.generated)] for s in seqs], dtype=torch.int32)
            yield {"output_ids": ids, "sequence_lengths": lengths}


class ModelRunnerCpp:
    """STAND-IN ModelRunnerCpp: wraps an Executor; its generate() is not safe to call concurrently."""

    __slots__ = ("_limits", "max_batch_size", "max_input_len", "max_seq_len", "session")

    def __init__(self, executor: trtllm.Executor, limits: _Limits) -> None:
        self.session = executor  # the 1.2.1 name: ModelRunnerCpp has no `executor` attribute
        self.max_batch_size = limits.max_batch_size
        self.max_input_len = limits.max_input_len
        self.max_seq_len = limits.max_seq_len
        self._limits = limits

    @classmethod
    def from_dir(  # the 1.2.1 keyword list, every one of them, and nothing else
        cls, engine_dir: str, *, lora_dir: str | None = None, rank: int = 0, max_batch_size: int | None = None,
        max_input_len: int | None = None, max_output_len: int | None = None, max_beam_width: int | None = None,
        max_attention_window_size: list[int] | None = None, sink_token_length: int | None = None,
        kv_cache_free_gpu_memory_fraction: float | None = None, cross_kv_cache_fraction: float | None = None,
        medusa_choices: list[list[int]] | None = None, eagle_choices: list[list[int]] | None = None,
        eagle_posterior_threshold: float | None = None, eagle_use_dynamic_tree: bool = False,
        eagle_dynamic_tree_max_top_k: int | None = None, lookahead_config: list[int] | None = None,
        debug_mode: bool = False, lora_ckpt_source: str = "hf", use_gpu_direct_storage: bool = False,
        gpu_weights_percent: float = 1, max_tokens_in_paged_kv_cache: int | None = None,
        kv_cache_enable_block_reuse: bool = False, enable_chunked_context: bool = False, is_enc_dec: bool = False,
        multi_block_mode: bool = True, enable_context_fmha_fp32_acc: bool | None = None,
        cuda_graph_mode: bool | None = None, logits_processor_map: dict[str, Any] | None = None,
        device_ids: list[int] | None = None, is_orchestrator_mode: bool = False, use_runtime_defaults: bool = True,
        gather_generation_logits: bool = False, use_variable_beam_width_search: bool = False,
        mm_embedding_offloading: bool = False, fail_fast_on_attention_window_too_large: bool = False,
    ) -> ModelRunnerCpp:
        limits = _read_limits(engine_dir)
        config = trtllm.ExecutorConfig(max_batch_size or limits.max_batch_size, 1, kv_cache_free_gpu_memory_fraction)
        executor = trtllm.Executor(Path(engine_dir), trtllm.ModelType.DECODER_ONLY, config,
                                   max_input_len=limits.max_input_len, leader=rank == 0)
        return cls(executor, limits)

    def generate(self, batch_input_ids: list[torch.Tensor], *, max_new_tokens: int = 1, end_id: int | None = None,
                 pad_id: int | None = None, **kwargs: Any) -> list[list[int]]:
        prompts = [t.tolist() for t in batch_input_ids]
        _check_inputs(self._limits, [len(p) for p in prompts], max_new_tokens)
        ids = self.session.enqueue_requests([trtllm.Request(p, max_new_tokens, end_id=end_id, pad_id=pad_id)
                                              for p in prompts])
        outputs: dict[int, list[int]] = {i: [] for i in ids}
        done: set[int] = set()
        while done != set(ids):
            for response in self.session.await_responses():  # no ids: takes other callers' responses too
                if response.request_id in outputs:
                    outputs[response.request_id] += response.result.output_token_ids[0]
                if response.result.is_final:
                    done.add(response.request_id)
        return [outputs[i] for i in ids]
