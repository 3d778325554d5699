#!/usr/bin/env bash
# On a CUDA GPU: the cost of constrained decoding (issue targets: mask time per step; <= 10% throughput
# lost with every one of 64 streams under a JSON schema). Two parts, each printing tables:
#   1. splitserve.bench.constraint_mask: per-step bitmask fill (host), advance and application to the logits
#      (device) at batch 1, 64 and 256, for MASK_LIBRARIES (llguidance and xgrammar) and each TOKENIZER_DIRS entry;
#   2. splitserve.bench.constraint_throughput: the native engine with 0%, 50% and 100% of STREAMS constrained,
#      on a Llama-3-8B-shaped model with random bf16 weights, one model per MODEL_TOKENIZERS entry (its vocabulary
#      is that tokenizer's; the prompt is token ids of the default model's vocabulary). With BASELINE_SERVICES (a
#      `services` folder of another checkout) each model is measured with that code first, in the same run.
# Needs llguidance (and xgrammar for part 1) importable: carry their wheels to a machine without network.
#   OUT=results TOKENIZER_DIRS="tok llama3-tok" MODEL_TOKENIZERS="tok llama3-tok" bash deploy/gpu/bench_constraints.sh
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python3}"
OUT="${OUT:-$(mktemp -d -t splitserve-constraints.XXXXXX)}"
STREAMS="${STREAMS:-64 256}"
NEW_TOKENS="${NEW_TOKENS:-128}"
ROUNDS="${ROUNDS:-3}"
BASE_PATH="${PYTHONPATH:-}"
export PYTHONPATH="$ROOT/services:$ROOT/clients/python${BASE_PATH:+:$BASE_PATH}"
mkdir -p "$OUT"
failed=0
mask_args=()
for dir in ${TOKENIZER_DIRS:-default}; do mask_args+=(--tokenizer "$dir"); done
for library in ${MASK_LIBRARIES:-xgrammar llguidance}; do mask_args+=(--library "$library"); done
"$PY" -m splitserve.bench.constraint_mask "${mask_args[@]}" --device cuda 2>&1 | tee "$OUT/mask.log" || failed=1
stream_args=()
for streams in $STREAMS; do stream_args+=(--streams "$streams"); done
index=0
for tokenizer in ${MODEL_TOKENIZERS:-default}; do
  index=$((index + 1))
  model="/tmp/splitserve-random-llama-$index"
  tokenizer_args=()
  [ "$tokenizer" != default ] && tokenizer_args=(--tokenizer "$tokenizer")
  if [ ! -f "$model/config.json" ]; then
    "$PY" deploy/gpu/make_random_llama.py --out "$model" "${tokenizer_args[@]}" || exit 2
  fi
  for services in ${BASELINE_SERVICES:-} "$ROOT/services"; do
    echo "## $services, model vocabulary of $tokenizer"
    PYTHONPATH="$services:$ROOT/clients/python${BASE_PATH:+:$BASE_PATH}" "$PY" -m splitserve.bench.constraint_throughput \
      --model "$model" "${stream_args[@]}" --new-tokens "$NEW_TOKENS" --rounds "$ROUNDS" --device cuda 2>&1 || failed=1
  done
done > >(tee "$OUT/throughput.log") 2>&1
echo "logs in $OUT"
exit "$failed"
