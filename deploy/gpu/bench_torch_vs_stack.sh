#!/usr/bin/env bash
# On an NVIDIA H100/H200: the torch engine in-process vs the full two-tier stack over the same engine,
# on a Llama-3-8B-shaped model with random bf16 weights, ISL/OSL 128/128 at several concurrencies.
# Prints both throughputs and their ratio per concurrency, for the engine in the generator process
# and in its own process (--engine-process). Needs no internet once the default model's
# tokenizer is cached (or pass TOKENIZER_DIR=folder with tokenizer files).
#
#   bash deploy/gpu/bench_torch_vs_stack.sh   # CONCURRENCY=1,16,64,128 DURATION=20 WARMUP=5 STAGGER=0
#                                             # REPEAT=1 (interleaved rounds) ENGINE_PROCESS=1
#
# A request lasts 10-20 s at 128 streams here: give windows of several request lengths, and STAGGER
# (seconds, under WARMUP) so that the engine in-process does not run its streams in lockstep waves.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
CONCURRENCY="${CONCURRENCY:-1,16,64,128}"
DURATION="${DURATION:-20}"
WARMUP="${WARMUP:-5}"
STAGGER="${STAGGER:-0}"
REPEAT="${REPEAT:-1}"
ENGINE_PROCESS="${ENGINE_PROCESS:-1}"
MAX_BATCH="${MAX_BATCH:-128}"
OUT="${OUT:-$(mktemp -d -t splitserve-gpu-bench.XXXXXX)}"
MODEL_DIR="${MODEL_DIR:-$OUT/llama3-8b-random}"

# Our package: installed (pip install --no-deps -e .), else straight from the tree.
if ! "$PY" -c "import splitserve.bench, splitserve.api.text.v1.text_pb2" 2>/dev/null; then
  export PYTHONPATH="$ROOT/services:$ROOT/clients/python${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -c "import splitserve.bench, splitserve.api.text.v1.text_pb2" \
    || { echo "splitserve is not importable: run 'pip install --no-deps -e .' here first" >&2; exit 2; }
fi
for module in torch transformers grpc psutil tqdm; do
  "$PY" -c "import $module" || { echo "missing Python module: $module" >&2; exit 2; }
done
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('GPU:', torch.cuda.get_device_name(0))"

if [ ! -f "$MODEL_DIR/config.json" ]; then
  "$PY" deploy/gpu/make_random_llama.py --out "$MODEL_DIR" ${TOKENIZER_DIR:+--tokenizer "$TOKENIZER_DIR"}
fi

# Cache sized for MAX_BATCH sequences of 256 tokens with room to spare; 8B bf16 needs 128 KiB per token.
GEN_ARGS=(--generator-arg=--device=cuda --generator-arg=--dtype=bfloat16
          --generator-arg=--max-total-tokens=512 --generator-arg=--max-input-tokens=256
          --generator-arg=--max-new-tokens=256 --generator-arg=--kv-cache-tokens=65536
          --generator-arg=--max-batch-tokens=4096)
COMMON=(--model "$MODEL_DIR" --engine transformers --max-batch-size "$MAX_BATCH" --concurrency "$CONCURRENCY"
        --input-len 128 --output-len 128 --warmup "$WARMUP" --duration "$DURATION" --stagger "$STAGGER" --no-progress "${GEN_ARGS[@]}")

# Separate processes, so one engine's GPU memory is gone before the next loads its own. Each round
# runs the engine in-process, then the stack (engine in the generator process), then, unless
# ENGINE_PROCESS=0, the stack with the engine in its own process (--engine-process). Rounds
# interleave, so drift of the card or host between runs falls on both sides of each ratio.
REPORTS=()
for ROUND in $(seq "$REPEAT"); do
  "$PY" -m splitserve.bench --in-process "${COMMON[@]}" --json "$OUT/in_process_$ROUND.json"
  "$PY" -m splitserve.bench "${COMMON[@]}" --json "$OUT/stack_$ROUND.json"
  REPORTS+=("$OUT/in_process_$ROUND.json" "$OUT/stack_$ROUND.json")
  if [ "$ENGINE_PROCESS" = 1 ]; then
    "$PY" -m splitserve.bench "${COMMON[@]}" --generator-arg=--engine-process \
      --json "$OUT/stack_engine_process_$ROUND.json"
    REPORTS+=("$OUT/stack_engine_process_$ROUND.json")
  fi
done

"$PY" deploy/gpu/compare_reports.py "${REPORTS[@]}"
echo "reports: ${REPORTS[*]}"
