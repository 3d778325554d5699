#!/usr/bin/env bash
# The native engine's tensor parallelism on one host's GPUs, TP=1 against TP=$TP in one run:
#   1. parity: deploy/gpu/tp_parity.py (token-exact greedy in fp32; teacher-forced top-1 agreement in bf16 on
#      the Llama-3-8B-shaped random model);
#   2. speed: `splitserve bench --in-process`, ISL/OSL 128/128 at 1 and 256 streams; then (part "long")
#      LONG_ISL-token prompts at 256 streams, a KV budget one H200 cannot hold at TP=1 (4,096 + 128 tokens each);
#   3. both tiers over the TP generator: tests/test_tensor_parallel_stack.py (streaming, cancellation, SIGTERM
#      drain, a killed worker rank) on the same model.
# Needs the pinned packages the GPU image lacks on PYTHONPATH (see the README's status section).
#   OUT=results TP=2 bash deploy/gpu/check_tensor_parallel.sh
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python3}"
OUT="${OUT:-$(mktemp -d -t splitserve-tp.XXXXXX)}"
TP="${TP:-2}"
MODEL_DIR="${MODEL_DIR:-/tmp/llama3-8b-random}"
DURATION="${DURATION:-20}"
LONG_ISL="${LONG_ISL:-4096}"
LONG_DURATION="${LONG_DURATION:-60}"  # 256 prompts of 4,096 tokens are a million tokens of prefill
PARTS="${PARTS:-parity speed long stack}"
export PYTHONPATH="$ROOT/services:$ROOT/clients/python${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
failed=0
step() { echo "+ $*"; "$@" || failed=1; }

nvidia-smi --query-gpu=index,name,memory.total --format=csv
if [ ! -f "$MODEL_DIR/config.json" ]; then
  step "$PY" deploy/gpu/make_random_llama.py --out "$MODEL_DIR" ${TOKENIZER_DIR:+--tokenizer "$TOKENIZER_DIR"}
fi
case " $PARTS " in *" parity "*)
  "$PY" deploy/gpu/tp_parity.py --tp "$TP" --device cuda --model "$MODEL_DIR" --tokenizer "$MODEL_DIR" 2>&1 | tee "$OUT/parity.log" \
    || failed=1 ;;
esac
GEN=(--generator-arg=--device=cuda --generator-arg=--dtype=bfloat16 --generator-arg=--kv-page-size=16
     --generator-arg=--max-batch-tokens=8192 --generator-arg=--kv-cache-memory-fraction=0.85)
COMMON=(--model "$MODEL_DIR" --in-process --engine native --max-batch-size 256 --warmup 5 --stagger 2 --no-progress)
case " $PARTS " in *" speed "*)
  for tp in $(printf '%s\n' 1 "$TP" | sort -un); do
    step "$PY" -m splitserve.bench "${COMMON[@]}" --duration "$DURATION" --input-len 128 --output-len 128 \
      --concurrency 1,256 "${GEN[@]}" --generator-arg=--max-total-tokens=512 --generator-arg=--max-input-tokens=256 \
      --generator-arg=--tensor-parallel-size="$tp" --json "$OUT/tp${tp}_128.json"
  done ;;
esac
case " $PARTS " in *" long "*)
  for tp in $(printf '%s\n' 1 "$TP" | sort -un); do
    step "$PY" -m splitserve.bench "${COMMON[@]}" --duration "$LONG_DURATION" --input-len "$LONG_ISL" \
      --output-len 128 --concurrency 256 "${GEN[@]}" --generator-arg=--max-total-tokens=$((LONG_ISL + 256)) \
      --generator-arg=--max-input-tokens="$LONG_ISL" --generator-arg=--tensor-parallel-size="$tp" \
      --json "$OUT/tp${tp}_long.json"
  done ;;
esac
case " $PARTS " in *" stack "*)
  SPLITSERVE_TP_MODEL="$MODEL_DIR" SPLITSERVE_TP_DEVICE=cuda SPLITSERVE_TP_SIZE="$TP" \
    "$PY" -m pytest -p no:cacheprovider -q -o addopts="" tests/test_tensor_parallel_stack.py 2>&1 \
    | tee "$OUT/stack.log" || failed=1 ;;
esac
echo "reports in $OUT"
exit "$failed"
