"""Reads a prebuilt engine's build limits and refuses requests beyond them before they reach it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from splitserve.common.errors import InvalidRequest
from splitserve.link.types import GenerationRequest


@dataclass(frozen=True)
class EngineLimits:
    """The build_config limits of an engine dir (trtllm-build --max_batch_size/--max_input_len/--max_seq_len)."""

    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    vocab_size: int | None = None
    tensor_parallel_size: int = 1


def read_engine_limits(engine_dir: str) -> EngineLimits:
    """Parses `config.json` of an engine dir; raises FileNotFoundError/ValueError naming what is wrong."""
    path = Path(engine_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{engine_dir} is not a TensorRT-LLM engine dir (no config.json); "
                                "build one with `splitserve build-engine`")
    config = json.loads(path.read_text())
    build = config.get("build_config") or {}
    missing = [k for k in ("max_batch_size", "max_input_len", "max_seq_len") if build.get(k) is None]
    if missing:
        raise ValueError(f"{path}: build_config lacks {', '.join(missing)}")
    pretrained = config.get("pretrained_config") or {}
    mapping = pretrained.get("mapping") or {}
    return EngineLimits(
        max_batch_size=int(build["max_batch_size"]), max_input_len=int(build["max_input_len"]),
        max_seq_len=int(build["max_seq_len"]),
        vocab_size=int(pretrained["vocab_size"]) if pretrained.get("vocab_size") else None,
        tensor_parallel_size=int(mapping.get("tp_size", 1)),
    )


def check_request(request: GenerationRequest, limits: EngineLimits) -> None:
    """Raises InvalidRequest naming the engine's build limit the request would exceed."""
    prompt = len(request.prompt_token_ids)
    if prompt > limits.max_input_len:
        raise InvalidRequest(f"prompt has {prompt} tokens, over the engine's build limit "
                             f"max_input_len={limits.max_input_len}")
    total = prompt + (request.max_new_tokens or 0)
    if total > limits.max_seq_len:
        raise InvalidRequest(f"prompt ({prompt} tokens) + max_new_tokens ({request.max_new_tokens}) = {total} "
                             f"is over the engine's build limit max_seq_len={limits.max_seq_len}")


# ModelRunner/ModelRunnerCpp raise RuntimeError with these messages when a batch exceeds a limit.
_LIMIT_MESSAGE = re.compile(r"^(Input batch size|Maximum input length|Num beams) \(\d+\).* exceeds ")


def limit_error(error: BaseException) -> InvalidRequest | None:
    """The runtime's own limit errors, as InvalidRequest; None for any other error."""
    if isinstance(error, RuntimeError) and _LIMIT_MESSAGE.match(str(error)):
        return InvalidRequest(f"request exceeds an engine limit: {error}")
    return None
