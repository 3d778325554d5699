#!/usr/bin/env bash
# Validates the TensorRT-LLM engines ("trtllm" and "trtllm-engine") against the real TensorRT-LLM,
# inside NVIDIA's release container, on a host with an NVIDIA GPU and Docker:
#   deploy/trtllm/validate.sh            # from the repository root
# It builds an engine for the default model, serves it with each TRT engine behind the tokenizer
# tier, and checks greedy parity with the torch engine, streaming, cancellation and limit errors.
set -euo pipefail

IMAGE="${TRTLLM_IMAGE:-nvcr.io/nvidia/tensorrt-llm/release:1.2.1}"  # engines need this exact version
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${SPLITSERVE_CACHE:-$HOME/.cache/splitserve}"
mkdir -p "$CACHE"

if [[ "${1:-}" != "--inside" ]]; then
  exec docker run --rm --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
    -v "$ROOT:/src:ro" -v "$CACHE:/root/.cache/splitserve" -w /src \
    "$IMAGE" bash /src/deploy/trtllm/validate.sh --inside
fi

# Inside the container: keep its torch/transformers/TensorRT-LLM, add what splitserve needs besides.
python3 -m pip install --quiet --no-deps /src
python3 -m pip install --quiet grpcio==1.85.1 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 \
  "protobuf>=6.31,<8" gguf==0.19.0 psutil
python3 -c "import tensorrt_llm; print('TensorRT-LLM', tensorrt_llm.__version__)"

WORK=/root/.cache/splitserve/trtllm-validate
mkdir -p "$WORK"
python3 /src/deploy/trtllm/check.py --work "$WORK"
