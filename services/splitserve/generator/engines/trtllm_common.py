"""Pieces both TensorRT-LLM engines share: the lazy import, model facts, admission and finish mapping.

TensorRT-LLM is imported only when a TRT engine is chosen: it is large, touches CUDA on import and
cannot be installed on most development machines.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType

from splitserve.common.errors import Overloaded
from splitserve.generator.finish import stop_reason
from splitserve.link.types import FinishReason, GenerationChunk, GenerationRequest, TokenOutput

# The release container the adapters are validated in (deploy/trtllm/validate.sh).
TENSORRT_LLM_IMAGE = "nvcr.io/nvidia/tensorrt-llm/release:1.2.1"
INSTALL_HINT = (
    "TensorRT-LLM is not installed. Run the generator inside NVIDIA's container "
    f"({TENSORRT_LLM_IMAGE}) or install it on a Linux host with an NVIDIA GPU: "
    "pip install tensorrt_llm==1.2.1 --extra-index-url https://pypi.nvidia.com "
    "(or choose --engine transformers)."
)


class TensorRTLLMMissing(RuntimeError):
    """A TensorRT-LLM engine was chosen but the tensorrt_llm package cannot be imported."""


def require_tensorrt_llm() -> None:
    """Fails fast (without importing it: that is slow and needs a GPU) when tensorrt_llm is absent."""
    if importlib.util.find_spec("tensorrt_llm") is None:
        raise TensorRTLLMMissing(INSTALL_HINT)


def import_trtllm(module: str = "tensorrt_llm") -> ModuleType:
    """Imports a tensorrt_llm module, turning a missing package into the install hint."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is not None and error.name.split(".")[0] == "tensorrt_llm":
            raise TensorRTLLMMissing(INSTALL_HINT) from error
        raise


@dataclass(frozen=True)
class ModelFacts:
    """Token facts from the Hugging Face folder: TensorRT-LLM runs without a tokenizer, so we supply them."""

    vocab_size: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int

    @property
    def end_id(self) -> int:
        return self.eos_token_ids[0]


def read_model_facts(model_path: str) -> ModelFacts:
    """Vocab size, EOS ids (generation config, model config, tokenizer) and the pad id of a model folder."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    config = AutoConfig.from_pretrained(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    try:
        generation: object = GenerationConfig.from_pretrained(model_path)
    except OSError:  # the folder has no generation_config.json
        generation = None
    eos = _collect_ids(getattr(s, "eos_token_id", None) for s in (generation, config, tokenizer))
    if not eos:
        raise ValueError(f"{model_path} defines no EOS token id; TensorRT-LLM needs an explicit end_id")
    pads = _collect_ids(getattr(s, "pad_token_id", None) for s in (generation, config, tokenizer))
    vocab = max(int(config.vocab_size), len(tokenizer))
    return ModelFacts(vocab_size=vocab, eos_token_ids=eos, pad_token_id=pads[0] if pads else eos[0])


def _collect_ids(values: object) -> tuple[int, ...]:
    found: list[int] = []
    for value in values:  # type: ignore[attr-defined]
        for token_id in value if isinstance(value, list) else [value]:
            if isinstance(token_id, int) and token_id >= 0 and token_id not in found:
                found.append(token_id)
    return tuple(found)


def end_and_stop_ids(request: GenerationRequest, facts: ModelFacts) -> tuple[int, list[int]]:
    """TensorRT-LLM takes one end_id: further EOS ids become stop tokens; ignore_eos disables end_id (-1)."""
    stops = list(request.stop_token_ids)
    if request.ignore_eos:
        return -1, stops
    extra_eos = [t for t in facts.eos_token_ids[1:] if t not in stops]
    return facts.end_id, stops + extra_eos


class Admission:
    """Counts requests in flight and refuses new ones beyond the batch plus the queue."""

    def __init__(self, max_batch_size: int, max_queued_requests: int) -> None:
        self.limit = max_batch_size + max_queued_requests
        self.in_flight = 0

    def enter(self) -> None:
        if self.in_flight >= self.limit:
            raise Overloaded(f"generator queue is full ({self.limit} requests in flight); retry later")
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1


@dataclass
class StreamState:
    """What one request has streamed so far; builds its chunks with torch-engine semantics."""

    request: GenerationRequest
    num_generated: int = 0
    last_token: int | None = None

    def chunk(self, tokens: list[TokenOutput]) -> GenerationChunk:
        self._count(tokens)
        return GenerationChunk(tokens)

    def final(self, tokens: list[TokenOutput], reason: FinishReason, stop_token_id: int | None) -> GenerationChunk:
        """The last chunk; the stop/EOS token ends the stream as it does with the torch engine.

        TensorRT-LLM leaves the end_id token out of its output, so it is appended here.
        """
        last = tokens[-1].token_id if tokens else self.last_token
        if stop_token_id is not None and last != stop_token_id:
            tokens = [*tokens, TokenOutput(stop_token_id)]
        self._count(tokens)
        return GenerationChunk(tokens, reason, stop_token_id, len(self.request.prompt_token_ids),
                               self.num_generated, self.request.sampling.seed)

    def _count(self, tokens: list[TokenOutput]) -> None:
        self.num_generated += len(tokens)
        if tokens:
            self.last_token = tokens[-1].token_id


def stop_reason_of(token_id: int | None, request: GenerationRequest,
                   facts: ModelFacts) -> tuple[FinishReason, int | None]:
    """Classifies a stop the engine reported on `token_id` (see generator/finish.py)."""
    return stop_reason(token_id, request, facts.eos_token_ids, FinishReason.STOP_TOKEN)
