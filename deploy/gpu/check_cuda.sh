#!/usr/bin/env bash
# Runs the tests on a CUDA GPU with the default (native) engine: device auto -> cuda, bf16 unless the
# pytest arguments say --generator-dtype float32 (the parity tests against transformers need float32).
# Expects: wheels of the pinned packages the GPU image lacks in .whl/ (see the README's status
# section), the default model's GGUF at $GGUF, and the generated stubs (pip install -e . or carried).
# Usage: GGUF=/path/SmolLM2-135M-Instruct.Q4_1.gguf bash deploy/gpu/check_cuda.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${GGUF:?set GGUF to the SmolLM2-135M-Instruct.Q4_1.gguf file}"
SITE=${SITE:-/tmp/splitserve-site}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
fi
export PYTHONPATH="$SITE:$PWD/services:$PWD/clients/python${PYTHONPATH:+:$PYTHONPATH}"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/splitserve-cache}
MODEL_DIR="$XDG_CACHE_HOME/splitserve/models/SmolLM2-135M-Instruct"
python3 - "$GGUF" "$MODEL_DIR" <<'PY'
import sys, torch, transformers
from pathlib import Path
from splitserve.common.model_store import convert_gguf
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0),
      "transformers", transformers.__version__)
if not (Path(sys.argv[2]) / "config.json").exists():
    convert_gguf(Path(sys.argv[1]), Path(sys.argv[2]))
PY
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
python3 -m pytest -p no:cacheprovider -q -o addopts="" "${@:-tests/test_generation.py}"
