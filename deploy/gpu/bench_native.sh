#!/usr/bin/env bash
# On an NVIDIA H200 (or any CUDA GPU): the native engine's figures beside the plain-PyTorch anchor
# and the transformers engine, on a Llama-3-8B-shaped model with random bf16 weights, in one run.
#   1. the anchor (ANCHOR=path to graph_decode.py, if given): dense cache, one CUDA graph per batch;
#   2. deploy/gpu/native_figures.py: decode ms/step at batch 1-256, attention kernels, prefill tok/s, memory;
#   3. `splitserve bench --in-process`, ISL/OSL 128/128: the native engine at 1 and 256 streams,
#      then the transformers engine at 1 and 128 streams (it cannot go faster; the windows are short).
# Needs no internet: the tokenizer comes from TOKENIZER_DIR (default: the default model's cache).
#   OUT=results TOKENIZER_DIR=tok ANCHOR=graph_decode.py bash deploy/gpu/bench_native.sh
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python3}"
OUT="${OUT:-$(mktemp -d -t splitserve-native.XXXXXX)}"
MODEL_DIR="${MODEL_DIR:-/tmp/llama3-8b-random}"
DURATION="${DURATION:-20}"
export PYTHONPATH="$ROOT/services:$ROOT/clients/python${PYTHONPATH:+:$PYTHONPATH}"
failed=0
step() { echo "== $*"; "$@" || { echo "FAILED: $*"; failed=1; }; }

if [ ! -f "$MODEL_DIR/config.json" ]; then
  step "$PY" deploy/gpu/make_random_llama.py --out "$MODEL_DIR" ${TOKENIZER_DIR:+--tokenizer "$TOKENIZER_DIR"}
fi
if [ -n "${ANCHOR:-}" ]; then
  (cd "$OUT" && step "$PY" "$ROOT/$ANCHOR")
fi
step "$PY" deploy/gpu/native_figures.py --model "$MODEL_DIR"

GEN=(--generator-arg=--device=cuda --generator-arg=--dtype=bfloat16 --generator-arg=--max-total-tokens=512
     --generator-arg=--max-input-tokens=256 --generator-arg=--max-new-tokens=256 --generator-arg=--max-batch-tokens=8192)
COMMON=(--model "$MODEL_DIR" --in-process --input-len 128 --output-len 128 --warmup 5 --duration "$DURATION"
        --stagger 2 --no-progress)
step "$PY" -m splitserve.bench "${COMMON[@]}" --engine native --max-batch-size 256 --concurrency 1,256 \
  "${GEN[@]}" --generator-arg=--kv-cache-tokens=131072 --generator-arg=--kv-page-size=16 --json "$OUT/native.json"
step "$PY" -m splitserve.bench "${COMMON[@]}" --engine transformers --max-batch-size 128 --concurrency 1,128 \
  "${GEN[@]}" --generator-arg=--kv-cache-tokens=65536 --generator-arg=--kv-page-size=64 --json "$OUT/transformers.json"
echo "reports in $OUT"
exit "$failed"
