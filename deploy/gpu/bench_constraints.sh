#!/usr/bin/env bash
# On a CUDA GPU: the cost of constrained decoding (issue targets: mask time per step; <= 10% throughput
# lost with every one of 64 streams under a JSON schema). Two parts, each printing a table:
#   1. splitserve.bench.constraint_mask: per-step bitmask fill (host) and its application to the logits
#      (device) at batch 1, 64 and 256, llguidance against xgrammar, for each TOKENIZER_DIRS entry;
#   2. splitserve.bench.constraint_throughput: the native engine with 0%, 50% and 100% of 64 streams
#      constrained, on a Llama-3-8B-shaped model with random bf16 weights and the default model's tokenizer.
# Needs llguidance (and xgrammar for part 1) importable: carry their wheels to a machine without network.
#   OUT=results TOKENIZER_DIR=tok TOKENIZER_DIRS="tok llama3-tok" bash deploy/gpu/bench_constraints.sh
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python3}"
OUT="${OUT:-$(mktemp -d -t splitserve-constraints.XXXXXX)}"
MODEL_DIR="${MODEL_DIR:-/tmp/llama3-8b-random}"
export PYTHONPATH="$ROOT/services:$ROOT/clients/python${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
failed=0
mask_args=()
for dir in ${TOKENIZER_DIRS:-${TOKENIZER_DIR:-default}}; do mask_args+=(--tokenizer "$dir"); done
"$PY" -m splitserve.bench.constraint_mask "${mask_args[@]}" --device cuda 2>&1 | tee "$OUT/mask.log" || failed=1
if [ ! -f "$MODEL_DIR/config.json" ]; then
  "$PY" deploy/gpu/make_random_llama.py --out "$MODEL_DIR" ${TOKENIZER_DIR:+--tokenizer "$TOKENIZER_DIR"} || exit 2
fi
"$PY" -m splitserve.bench.constraint_throughput --model "$MODEL_DIR" --streams 64 --device cuda 2>&1 \
  | tee "$OUT/throughput.log" || failed=1
echo "logs in $OUT"
exit "$failed"
