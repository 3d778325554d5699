#!/usr/bin/env bash
# Validates the TensorRT-LLM engines ("trtllm": LLM API; "trtllm-engine": a prebuilt engine dir through
# ModelRunnerCpp's Executor) against the real TensorRT-LLM, inside NVIDIA's release container, on a
# host with one NVIDIA GPU and Docker. From the repository root:
#   deploy/trtllm/validate.sh            # runs itself again inside the container (--inside)
#   DRY_RUN=1 deploy/trtllm/validate.sh  # the same checks against the stand-in package, no GPU (CI)
# It builds an engine for the default model, computes a greedy reference with plain `generate`, serves
# each engine behind the tokenizer tier and checks greedy parity, streaming, cancellation, limit errors
# and capabilities: one PASS/FAIL line each, and a non-zero exit when any check fails.
set -euo pipefail

IMAGE="${TRTLLM_IMAGE:-nvcr.io/nvidia/tensorrt-llm/release:1.2.1}"  # engines need this exact version
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

DRY_RUN_WORK=""

dry_run() {
  local python="${PYTHON:-$ROOT/.venv/bin/python}"
  DRY_RUN_WORK="$(mktemp -d)"
  trap 'rm -rf "$DRY_RUN_WORK"' EXIT
  echo "== dry run against the STAND-IN TensorRT-LLM (tests/standin), not the real package"
  PYTHONPATH="$ROOT/tests/standin${PYTHONPATH:+:$PYTHONPATH}" \
    "$python" "$ROOT/deploy/trtllm/check.py" --standin --work "$DRY_RUN_WORK"
}

outside() {
  local cache="${SPLITSERVE_CACHE:-$HOME/.cache/splitserve}"
  mkdir -p "$cache"
  exec docker run --rm --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
    -v "$ROOT:/src:ro" -v "$cache:/root/.cache/splitserve" -w /root \
    "$IMAGE" bash /src/deploy/trtllm/validate.sh --inside
}

project_requirements() {
  # The project's dependencies less the ones the container provides: its torch, transformers (4.57.x)
  # and tokenizers stay, since TensorRT-LLM is built against them.
  python3 - "$1/pyproject.toml" <<'EOF'
import re
import sys
import tomllib

KEEP_THE_CONTAINERS = {"torch", "transformers", "tokenizers"}
with open(sys.argv[1], "rb") as f:
    for requirement in tomllib.load(f)["project"]["dependencies"]:
        if re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower() not in KEEP_THE_CONTAINERS:
            print(requirement)
EOF
}

inside() {
  # /src is mounted read-only and building the package writes generated stubs and egg-info: copy it.
  local src=/tmp/splitserve-src work=/root/.cache/splitserve/trtllm-validate
  rm -rf "$src"
  mkdir -p "$src" "$work"
  tar -C /src --exclude=./.git --exclude=./.venv -cf - . | tar -C "$src" -xf -
  project_requirements "$src" >"$src/requirements-container.txt"
  python3 -m pip install --quiet -r "$src/requirements-container.txt"
  python3 -m pip install --quiet --no-deps "$src"
  python3 -c "import tensorrt_llm, transformers; print('TensorRT-LLM', tensorrt_llm.__version__, \
'transformers', transformers.__version__)"
  cd "$work"
  python3 "$src/deploy/trtllm/check.py" --work "$work"
}

case "${1:-}" in
  --inside) inside ;;
  --standin) dry_run ;;
  "")
    if [[ "${DRY_RUN:-0}" == 1 ]]; then dry_run; else outside; fi
    ;;
  *)
    echo "usage: $0 [--standin]   (or DRY_RUN=1 $0)" >&2
    exit 2
    ;;
esac
