"""Facts of a Hugging Face model folder that the PyTorch engines share: device, dtype and EOS ids."""

from __future__ import annotations

from typing import Any

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def eos_ids(*sources: Any) -> tuple[int, ...]:
    """EOS ids from each source's `eos_token_id` (an int or a list), in order, without repeats."""
    found: list[int] = []
    for source in sources:
        value = getattr(source, "eos_token_id", None)
        for token_id in value if isinstance(value, list) else [value]:
            if isinstance(token_id, int) and token_id >= 0 and token_id not in found:
                found.append(token_id)
    if not found:
        raise ValueError("the model defines no EOS token id")
    return tuple(found)


def eos_ids_of_folder(folder: str) -> tuple[int, ...]:
    """EOS ids from the folder's generation config, model config and tokenizer, in that order."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    try:
        generation: Any = GenerationConfig.from_pretrained(folder)
    except OSError:  # no generation_config.json
        generation = None
    return eos_ids(generation, AutoConfig.from_pretrained(folder), AutoTokenizer.from_pretrained(folder))
