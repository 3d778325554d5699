"""The generator tier's configuration: one frozen object built from the command line."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from splitserve.common.server_flags import add_server_security_arguments
from splitserve.generator.engine import ENGINE_NAMES, OLD_ENGINE_NAMES
from splitserve.link.types import EngineCapabilities, EngineInfo


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything the generator tier needs to start."""

    model_path: str
    model_name: str
    address: str = "127.0.0.1:50052"
    engine: str = "native"
    engine_process: bool = False  # run the engine in a child process (engine_process.py); see auto_engine_process
    device: str = "auto"
    dtype: str = "auto"
    max_batch_size: int = 16
    max_queued_requests: int = 256
    max_total_tokens: int = 2048
    max_input_tokens: int = 1536
    max_new_tokens: int = 1024
    default_max_new_tokens: int = 128
    kv_cache_tokens: int = 16384
    kv_page_size: int = 64
    max_batch_tokens: int = 512
    grace_seconds: float = 10.0
    engine_dir: str | None = None  # trtllm-engine: the prebuilt engine dir (model_path gives the tokenizer)
    tensor_parallel_size: int = 1  # trtllm, native: GPUs per replica (trtllm-engine takes it from the engine)
    kv_cache_free_gpu_memory_fraction: float = 0.9  # TensorRT-LLM engines: share of free GPU memory for KV
    guided_decoding_backend: str | None = None  # trtllm: xgrammar or llguidance (constrained decoding); None: off
    kv_cache_memory_fraction: float | None = None  # native engine on CUDA: size the KV cache from free memory
    attention_backend: str = "auto"  # native engine: auto (triton on CUDA, torch elsewhere), triton, torch
    cuda_graphs: bool = True  # native engine on CUDA: capture decode steps
    enable_prefix_caching: bool = True  # native engine: share full KV blocks between equal prompt prefixes
    gil_switch_interval_ms: float | None = None  # sys.setswitchinterval for this process (None: Python's 5 ms)
    max_receive_message_bytes: int = 16 * 1024 * 1024  # larger requests: RESOURCE_EXHAUSTED from gRPC itself
    max_concurrent_streams: int = 0  # per connection (HTTP/2); 0 keeps gRPC's default, no limit
    tls_cert: str | None = None  # PEM files; with tls_client_ca only tokenizer tiers with a client cert connect
    tls_key: str | None = None
    tls_client_ca: str | None = None

    def engine_info(self, engine: str, vocab_size: int, eos_token_ids: tuple[int, ...],
                    capabilities: EngineCapabilities, engine_version: str = "") -> EngineInfo:
        """What an engine that takes its limits from this config serves."""
        return EngineInfo(
            model_name=self.model_name, engine=engine, vocab_size=vocab_size, eos_token_ids=eos_token_ids,
            max_input_tokens=self.max_input_tokens, max_total_tokens=self.max_total_tokens,
            max_new_tokens=self.max_new_tokens, default_max_new_tokens=self.default_max_new_tokens,
            max_batch_size=self.max_batch_size, capabilities=capabilities, engine_version=engine_version,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the generator's flags (model flags are added by the caller)."""
    d = GeneratorConfig("", "")
    parser.add_argument("--address", default=d.address, help="host:port to listen on")
    parser.add_argument("--engine", default=d.engine, choices=[*ENGINE_NAMES, *OLD_ENGINE_NAMES],
                        help="native (default), transformers (the reference: transformers' continuous batching; "
                             "'torch' is its old name), trtllm, trtllm-engine, bench")
    parser.add_argument("--engine-process", action=argparse.BooleanOptionalAction, default=None,
                        help="run the engine (native, transformers or bench) in a child process, apart from the "
                             "gRPC event loop, so the two share no GIL (default: on for the native engine on "
                             "CUDA with one GPU, where it carries more tokens per second; off elsewhere)")
    parser.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N (torch engine)")
    parser.add_argument("--dtype", default=d.dtype, choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--max-batch-size", type=int, default=d.max_batch_size)
    parser.add_argument("--max-queued-requests", type=int, default=d.max_queued_requests,
                        help="requests waiting beyond the batch before RESOURCE_EXHAUSTED")
    parser.add_argument("--max-total-tokens", type=int, default=d.max_total_tokens,
                        help="prompt + generated tokens per request")
    parser.add_argument("--max-input-tokens", type=int, default=d.max_input_tokens)
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    parser.add_argument("--default-max-new-tokens", type=int, default=d.default_max_new_tokens)
    parser.add_argument("--kv-cache-tokens", type=int, default=d.kv_cache_tokens,
                        help="KV cache capacity in tokens, shared by all requests")
    parser.add_argument("--kv-page-size", type=int, default=d.kv_page_size)
    parser.add_argument("--max-batch-tokens", type=int, default=d.max_batch_tokens)
    parser.add_argument("--grace-seconds", type=float, default=d.grace_seconds)
    parser.add_argument("--engine-dir", default=d.engine_dir,
                        help="trtllm-engine: engine dir built by `splitserve build-engine`")
    parser.add_argument("--tensor-parallel-size", type=int, default=d.tensor_parallel_size,
                        help="GPUs per model replica: trtllm (see the README for the MPI launch), or native "
                             "(rank 0 starts the other ranks itself)")
    parser.add_argument("--kv-cache-free-gpu-memory-fraction", type=float,
                        default=d.kv_cache_free_gpu_memory_fraction,
                        help="TensorRT-LLM engines: share of free GPU memory the KV cache takes")
    parser.add_argument("--guided-decoding-backend", default=d.guided_decoding_backend,
                        choices=["xgrammar", "llguidance"],
                        help="trtllm: build the LLM with this guided-decoding backend, so that requests may "
                             "carry a constraint (the native engine always can)")
    _add_native_arguments(parser, d)
    add_server_security_arguments(parser, d.max_receive_message_bytes, d.max_concurrent_streams)


def _add_native_arguments(parser: argparse.ArgumentParser, d: GeneratorConfig) -> None:
    parser.add_argument("--kv-cache-memory-fraction", type=float, default=d.kv_cache_memory_fraction,
                        help="native engine on CUDA: give the KV cache this share of the GPU memory free after "
                             "loading the weights (instead of --kv-cache-tokens)")
    parser.add_argument("--attention-backend", default=d.attention_backend, choices=["auto", "triton", "torch"],
                        help="native engine: paged-attention kernels (auto: triton on CUDA, torch elsewhere)")
    parser.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                        help="native engine: run decode steps eagerly on CUDA")
    parser.add_argument("--no-prefix-caching", dest="enable_prefix_caching", action="store_false",
                        help="native engine: do not share KV blocks between requests with a common prefix")
    parser.add_argument("--gil-switch-interval-ms", type=float, default=d.gil_switch_interval_ms,
                        help="how long a thread may hold the GIL while another waits for it (Python's default: "
                             "5): lower lets the engine thread in sooner when gRPC work is busy")


def from_args(args: argparse.Namespace, model_path: str, model_name: str) -> GeneratorConfig:
    """Builds and checks the config; raises ValueError on inconsistent limits."""
    config = GeneratorConfig(
        model_path=model_path, model_name=model_name, address=args.address,
        engine=OLD_ENGINE_NAMES.get(args.engine, args.engine),
        engine_process=auto_engine_process(args) if args.engine_process is None else args.engine_process,
        device=args.device, dtype=args.dtype, max_batch_size=args.max_batch_size,
        max_queued_requests=args.max_queued_requests, max_total_tokens=args.max_total_tokens,
        max_input_tokens=args.max_input_tokens, max_new_tokens=args.max_new_tokens,
        default_max_new_tokens=args.default_max_new_tokens, kv_cache_tokens=args.kv_cache_tokens,
        kv_page_size=args.kv_page_size, max_batch_tokens=args.max_batch_tokens, grace_seconds=args.grace_seconds,
        engine_dir=args.engine_dir, tensor_parallel_size=args.tensor_parallel_size,
        kv_cache_free_gpu_memory_fraction=args.kv_cache_free_gpu_memory_fraction,
        guided_decoding_backend=args.guided_decoding_backend,
        kv_cache_memory_fraction=args.kv_cache_memory_fraction, attention_backend=args.attention_backend,
        cuda_graphs=args.cuda_graphs, enable_prefix_caching=args.enable_prefix_caching,
        gil_switch_interval_ms=args.gil_switch_interval_ms,
        max_receive_message_bytes=args.max_receive_message_bytes, max_concurrent_streams=args.max_concurrent_streams,
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
    )
    check(config)
    return config


def auto_engine_process(args: argparse.Namespace) -> bool:
    """The default of --engine-process: on for the native engine on one CUDA device.

    Measured on an H200 (BENCHMARKS.md): with the engine in the generator process, its step loop and the
    gRPC work share one GIL and the stack keeps 0.84-0.93 of the engine's throughput at 256 streams; in
    its own process, 0.95-1.12. On a CPU the engine wants every core, and a second process costs more.
    """
    if args.engine != "native" or args.tensor_parallel_size != 1:
        return False
    if args.device == "auto":
        import torch

        return bool(torch.cuda.is_available())
    return str(args.device).startswith("cuda")


def check(config: GeneratorConfig) -> None:
    if config.max_input_tokens >= config.max_total_tokens:
        raise ValueError("--max-input-tokens must be below --max-total-tokens")
    if config.max_total_tokens > config.kv_cache_tokens:
        raise ValueError("--max-total-tokens must fit in --kv-cache-tokens (one request must fit the cache)")
    if not 1 <= config.default_max_new_tokens <= config.max_new_tokens:
        raise ValueError("--default-max-new-tokens must be between 1 and --max-new-tokens")
    if config.engine == "trtllm-engine" and not config.engine_dir:
        raise ValueError("--engine trtllm-engine needs --engine-dir")
    if config.engine_process and config.engine not in ("native", "transformers", "torch", "bench"):
        raise ValueError("--engine-process serves the native, transformers and bench engines "
                         "(TensorRT-LLM runs its own workers)")
    interval = config.gil_switch_interval_ms
    if interval is not None and not 0 < interval <= 100:
        raise ValueError("--gil-switch-interval-ms must be in (0, 100]")
    if config.guided_decoding_backend is not None and config.engine != "trtllm":
        raise ValueError("--guided-decoding-backend is for --engine trtllm (the native engine compiles constraints "
                         "itself; the others have none)")
    if config.tensor_parallel_size < 1:
        raise ValueError("--tensor-parallel-size must be at least 1")
    fraction = config.kv_cache_memory_fraction
    if fraction is not None and not 0 < fraction < 1:
        raise ValueError("--kv-cache-memory-fraction must be in (0, 1)")
    if not 0 < config.kv_cache_free_gpu_memory_fraction <= 1:
        raise ValueError("--kv-cache-free-gpu-memory-fraction must be in (0, 1]")


def apply_process_settings(config: GeneratorConfig) -> None:
    """Settings of the whole process, applied by its entry point (the generator's, or the engine process's)."""
    if config.gil_switch_interval_ms is not None:
        sys.setswitchinterval(config.gil_switch_interval_ms / 1000)
