#!/usr/bin/env bash
# Installs splitserve for development into ./.venv: CPU PyTorch (pinned), the project with its
# dev tools, and the stubs generated from protos/. Safe to run again.
#   TORCH_SPEC   what to install for PyTorch (default torch==2.13.0, the CPU build used in CI);
#                on a GPU host use e.g. TORCH_SPEC="torch==2.11.0" with the CUDA wheel index.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
echo "[install] $TORCH_SPEC"
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
echo "[install] splitserve and its dev tools (generates the gRPC stubs from protos/)"
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "[install] done: .venv/bin/splitserve is ready"
