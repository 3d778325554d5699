#!/usr/bin/env bash
# On an NVIDIA H100/H200: the torch engine in-process vs the full two-tier stack over the same engine,
# on a Llama-3-8B-shaped model with random bf16 weights, ISL/OSL 128/128 at several concurrencies.
# Prints both throughputs and their ratio per concurrency, for the engine in the generator process
# and in its own process (--engine-process). Needs no internet once the default model's
# tokenizer is cached (or pass TOKENIZER_DIR=folder with tokenizer files).
#
#   bash deploy/gpu/bench_torch_vs_stack.sh            # CONCURRENCY=1,16,64,128 DURATION=20 WARMUP=5 STAGGER=0
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
COMMON=(--model "$MODEL_DIR" --engine torch --max-batch-size "$MAX_BATCH" --concurrency "$CONCURRENCY"
        --input-len 128 --output-len 128 --warmup "$WARMUP" --duration "$DURATION" --stagger "$STAGGER" --no-progress "${GEN_ARGS[@]}")

# Separate processes, so the in-process engine's GPU memory is gone before the stack loads its own.
# The stack runs twice: the engine in the generator process, then in its own (--engine-process).
"$PY" -m splitserve.bench --in-process "${COMMON[@]}" --json "$OUT/in_process.json"
"$PY" -m splitserve.bench "${COMMON[@]}" --json "$OUT/stack.json"
"$PY" -m splitserve.bench "${COMMON[@]}" --generator-arg=--engine-process --json "$OUT/stack_engine_process.json"

"$PY" - "$OUT/in_process.json" "$OUT/stack.json" "$OUT/stack_engine_process.json" <<'PYEOF'
import json, sys
alone = json.load(open(sys.argv[1]))["in_process"]
print(f"{'stack':<22}{'level':<18}{'in-process tok/s':>18}{'stack tok/s':>14}{'ratio':>8}{'TTFT p50 +ms':>14}")
for path in sys.argv[2:]:
    name = "engine process" if "engine_process" in path else "engine in generator"
    for a, s in zip(alone, json.load(open(path))["stack"]):
        ratio = s["output_tokens_per_s"] / a["output_tokens_per_s"] if a["output_tokens_per_s"] else float("nan")
        added = s["ttft_ms"]["p50"] - a["ttft_ms"]["p50"]
        print(f"{name:<22}{s['level']:<18}{a['output_tokens_per_s']:>18.0f}{s['output_tokens_per_s']:>14.0f}"
              f"{ratio:>8.3f}{added:>14.1f}")
PYEOF
echo "reports: $OUT/in_process.json $OUT/stack.json $OUT/stack_engine_process.json"
