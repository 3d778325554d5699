"""Loads a Hugging Face model folder for the torch engine and builds its continuous-batching manager."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transformers import AutoModelForCausalLM, AutoTokenizer, ContinuousBatchingConfig, GenerationConfig

from splitserve.generator.engines.model_folder import eos_ids, resolve_device, resolve_dtype

if TYPE_CHECKING:
    from splitserve.generator.config import GeneratorConfig

log = logging.getLogger(__name__)

# Placeholders that make transformers create the per-request temperature/top-k/top-p processors;
# every request overrides all three (see TransformersEngine._request_kwargs).
_PROCESSOR_DEFAULTS = {"temperature": 0.7, "top_k": 50, "top_p": 0.9}


@dataclass
class LoadedModel:
    """A model on its device, with the facts the engine validates against."""

    model: Any
    vocab_size: int  # rows of the embedding: every valid token id is below this
    eos_token_ids: tuple[int, ...]

    def new_manager(self, config: GeneratorConfig) -> Any:
        """A fresh ContinuousBatchingManager with an explicitly sized cache."""
        generation = GenerationConfig(
            do_sample=True, max_new_tokens=config.default_max_new_tokens,
            eos_token_id=list(self.eos_token_ids), pad_token_id=self.eos_token_ids[0], **_PROCESSOR_DEFAULTS,
        )
        page_size = config.kv_page_size
        batching = ContinuousBatchingConfig(
            page_size=page_size,
            num_blocks=max(1, config.kv_cache_tokens // page_size),
            max_batch_tokens=config.max_batch_tokens,
            max_requests_per_batch=config.max_batch_size,
            per_request_processors=True,
            return_logprobs=True,
            allow_block_sharing=False,
        )
        return self.model.init_continuous_batching(generation_config=generation,
                                                   continuous_batching_config=batching)


def load_model(config: GeneratorConfig) -> LoadedModel:
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    log.info("loading %s on %s (%s)", config.model_path, device, dtype)
    model = AutoModelForCausalLM.from_pretrained(config.model_path, dtype=dtype)
    model = model.to(device).eval()  # type: ignore[arg-type]  # transformers types .to() too narrowly
    tokenizer = AutoTokenizer.from_pretrained(config.model_path)
    eos = eos_ids(getattr(model, "generation_config", None), model.config, tokenizer)
    return LoadedModel(model, model.get_input_embeddings().num_embeddings, eos)
