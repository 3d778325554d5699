"""`splitserve build-engine`: a Hugging Face folder to a TensorRT-LLM engine dir (TensorRT-LLM <= 1.2).

Two steps, as NVIDIA documents them: the model family's `convert_checkpoint.py` writes a
TensorRT-LLM checkpoint, then `trtllm-build` compiles it. Engines only load with the exact
TensorRT-LLM/TensorRT version that built them, so build inside the container you serve from.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from splitserve.generator.engines.trtllm_common import INSTALL_HINT

# Where NVIDIA's release container keeps the example converters.
DEFAULT_EXAMPLES_DIR = "/app/tensorrt_llm/examples"
# model_type (config.json) -> folder of its convert_checkpoint.py under examples/models/core.
CONVERTERS = {"llama": "llama", "mistral": "llama", "qwen2": "qwen", "qwen3": "qwen", "gemma": "gemma",
              "gemma2": "gemma", "phi3": "phi", "gpt2": "gpt"}


def add_build_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the flags of `splitserve build-engine` (the model folder comes from the caller's --model)."""
    parser.add_argument("--output-dir", required=True, help="engine dir to write (serve it with --engine-dir)")
    parser.add_argument("--work-dir", default=None,
                        help="where the intermediate checkpoint goes (default: OUTPUT_DIR.work)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--tp-size", type=int, default=1, help="tensor parallel GPUs the engine is split over")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-input-len", type=int, default=4096)
    parser.add_argument("--max-seq-len", type=int, default=5120, help="prompt + generated tokens")
    parser.add_argument("--examples-dir", default=DEFAULT_EXAMPLES_DIR,
                        help="TensorRT-LLM's examples folder (holds models/core/*/convert_checkpoint.py)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")


def run_build_engine(args: argparse.Namespace) -> int:
    """Converts and builds; returns the process exit code. Expects `args.model_path` (a HF folder)."""
    model_dir = Path(args.model_path)
    work = Path(args.work_dir or f"{args.output_dir}.work")
    try:
        converter = converter_script(model_dir, Path(args.examples_dir))
    except (FileNotFoundError, ValueError) as error:
        print(f"build-engine: {error}", file=sys.stderr)
        return 2
    source = work / "hf-untied" if has_tied_embeddings(model_dir) else model_dir
    commands = build_commands(args, converter, source, work / "checkpoint")
    if args.dry_run:
        if source != model_dir:
            print(f"# tied embeddings: write {source} with an explicit lm_head.weight first")
        for command in commands:
            print(shlex.join(command))
        return 0
    if shutil.which("trtllm-build") is None or not converter.is_file():
        print(f"build-engine: {INSTALL_HINT}", file=sys.stderr)
        return 2
    if source != model_dir:
        write_untied_copy(model_dir, source)
    for command in commands:
        print(f"+ {shlex.join(command)}", flush=True)
        if subprocess.run(command, check=False).returncode != 0:
            return 1
    print(f"engine ready in {args.output_dir} (serve: --engine trtllm-engine --engine-dir {args.output_dir})")
    return 0


def build_commands(args: argparse.Namespace, converter: Path, model_dir: Path, checkpoint: Path) -> list[list[str]]:
    """The two commands: convert the checkpoint, then compile it."""
    convert = [sys.executable, str(converter), "--model_dir", str(model_dir), "--output_dir", str(checkpoint),
               "--dtype", args.dtype, "--tp_size", str(args.tp_size)]
    build = ["trtllm-build", "--checkpoint_dir", str(checkpoint), "--output_dir", str(args.output_dir),
             "--gemm_plugin", "auto", "--max_batch_size", str(args.max_batch_size),
             "--max_input_len", str(args.max_input_len), "--max_seq_len", str(args.max_seq_len)]
    return [convert, build]


def converter_script(model_dir: Path, examples_dir: Path) -> Path:
    """The convert_checkpoint.py of the model's family."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    model_type = json.loads(config_path.read_text()).get("model_type", "")
    family = CONVERTERS.get(model_type)
    if family is None:
        raise ValueError(f"no TensorRT-LLM converter known for model_type {model_type!r}; "
                         f"supported: {', '.join(sorted(CONVERTERS))}")
    return examples_dir / "models" / "core" / family / "convert_checkpoint.py"


def has_tied_embeddings(model_dir: Path) -> bool:
    return bool(json.loads((model_dir / "config.json").read_text()).get("tie_word_embeddings", False))


def write_untied_copy(model_dir: Path, target: Path) -> None:
    """Copies the folder with an explicit lm_head.weight: converters have mishandled tied embeddings (SmolLM)."""
    import torch
    from safetensors.torch import load_file, save_file

    target.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():
        merged = item.suffix == ".safetensors" or item.name.endswith(".index.json")  # rewritten as one file
        if item.is_file() and not merged and item.name != "config.json":
            shutil.copy2(item, target / item.name)
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    if "lm_head.weight" not in tensors:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((model_dir / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (target / "config.json").write_text(json.dumps(config, indent=2))

