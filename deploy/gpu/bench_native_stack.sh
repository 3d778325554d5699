#!/usr/bin/env bash
# On a CUDA GPU: the native engine in-process against the full two-tier stack over it, in interleaved
# rounds, on a Llama-3-8B-shaped model with random bf16 weights, ISL/OSL 128/128 at 1 and 256 streams.
# Each round runs the engine in-process, then one stack per variant:
#   gen        the engine in the generator process (--no-engine-process)
#   gil        the same with --gil-switch-interval-ms=$GIL_MS (the engine thread gets the GIL back sooner)
#   process    the engine in its own process (--engine-process, the default for native on CUDA)
# The stacks run $TOKENIZERS tokenizer processes and 2 load-generator processes, with
# --stream-interval-ms=20. Then, optionally: PROFILE=1 attaches py-spy to the generator during a
# 256-stream stack run of each of PROFILE_VARIANTS; HOPS=1 runs a one-stream stack per variant with
# `--hops` (where TTFT goes). Reports land in OUT; compare_reports.py prints the ratios.
#
#   OUT=results TOKENIZER_DIR=tok ROUNDS=3 bash deploy/gpu/bench_native_stack.sh
#   FIRST_ROUND=3 ROUNDS=1 PROFILE=1 HOPS=1 ...      # a later call carrying on the same OUT
#   ENGINE=bench GEN_ARGS= MODEL_DIR=model DURATION=2 WARMUP=1 ROUNDS=1 ...   # the script itself, on a CPU
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python3}"
OUT="${OUT:-$(mktemp -d -t splitserve-native-stack.XXXXXX)}"
MODEL_DIR="${MODEL_DIR:-/tmp/llama3-8b-random}"
FIRST_ROUND="${FIRST_ROUND:-1}"
ROUNDS="${ROUNDS:-3}"
VARIANTS="${VARIANTS:-gen gil process}"
PROFILE_VARIANTS="${PROFILE_VARIANTS:-gen process}"
HOPS_VARIANTS="${HOPS_VARIANTS:-$VARIANTS}"
GIL_MS="${GIL_MS:-0.5}"
TOKENIZERS="${TOKENIZERS:-4}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-4}"
export PYTHONPATH="$ROOT/services:$ROOT/clients/python${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
if [ ! -f "$MODEL_DIR/config.json" ]; then
  "$PY" deploy/gpu/make_random_llama.py --out "$MODEL_DIR" ${TOKENIZER_DIR:+--tokenizer "$TOKENIZER_DIR"} || exit 2
fi

GEN=(--generator-arg=--device=cuda --generator-arg=--dtype=bfloat16 --generator-arg=--max-total-tokens=512
     --generator-arg=--max-input-tokens=256 --generator-arg=--max-new-tokens=256
     --generator-arg=--max-batch-tokens=8192 --generator-arg=--kv-cache-tokens=131072
     --generator-arg=--kv-page-size=16)
if [ -n "${GEN_ARGS+set}" ]; then read -r -a GEN <<<"$GEN_ARGS"; fi  # e.g. GEN_ARGS="" ENGINE=bench: a smoke run
COMMON=(--model "$MODEL_DIR" --engine "${ENGINE:-native}" --max-batch-size 256 --input-len 128 --output-len 128
        --warmup "$WARMUP" --duration "$DURATION" --stagger 2 --drain 30 --no-progress "${GEN[@]}")
STACK=(--tokenizers "$TOKENIZERS" --client-processes 2 --tokenizer-arg=--stream-interval-ms=20)

variant_flags() {  # the generator flags of one stack variant
  case "$1" in
    gen) echo "--generator-arg=--no-engine-process" ;;
    gil) echo "--generator-arg=--no-engine-process --generator-arg=--gil-switch-interval-ms=$GIL_MS" ;;
    process) echo "--generator-arg=--engine-process" ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
  esac
}

bench() {  # bench NAME FLAGS...: one report, its printout kept beside it
  local name="$1"; shift
  echo "== $name"
  "$PY" -m splitserve.bench "${COMMON[@]}" "$@" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log"
}

profile_generator() {  # once the stack serves and its window has begun: py-spy on the generator (and children)
  local name="$1" pid address
  for _ in $(seq 600); do
    address=$(pgrep -af "splitserve tokenizer" | grep -o -- "--address [0-9.:]*" | head -1 | cut -d' ' -f2)
    [ -n "$address" ] && "$PY" -m splitserve.probe "$address" >/dev/null 2>&1 && break
    sleep 1
  done
  pid=$(pgrep -f "splitserve generator" | head -1)
  sleep "$((WARMUP + 2))"
  py-spy record --pid "$pid" --subprocesses --gil --rate 200 --duration 8 --format raw \
    --output "$OUT/$name.pyspy.txt" >/dev/null 2>&1
  py-spy record --pid "$pid" --subprocesses --rate 200 --duration 4 --format raw \
    --output "$OUT/$name.pyspy-all.txt" >/dev/null 2>&1
}

for ROUND in $(seq "$FIRST_ROUND" "$((FIRST_ROUND + ROUNDS - 1))"); do
  bench "in_process_$ROUND" --in-process --concurrency 1,256
  for v in $VARIANTS; do
    # shellcheck disable=SC2046  # one or two flags
    bench "stack_${v}_$ROUND" "${STACK[@]}" --concurrency 1,256 $(variant_flags "$v")
  done
done
if [ "${PROFILE:-0}" = 1 ] && command -v py-spy >/dev/null; then
  for v in $PROFILE_VARIANTS; do
    profile_generator "profile_$v" &
    # shellcheck disable=SC2046
    bench "profile_$v" "${STACK[@]}" --concurrency 256 --duration 16 $(variant_flags "$v")
    wait
  done
fi
if [ "${HOPS:-0}" = 1 ]; then
  for v in $HOPS_VARIANTS; do
    # shellcheck disable=SC2046
    bench "hops_$v" "${STACK[@]}" --concurrency 1 --hops $(variant_flags "$v")
  done
fi
reports=()  # in round order: each stack report after its round's in-process one
for r in $(seq 1 "$((FIRST_ROUND + ROUNDS - 1))"); do
  for f in "$OUT/in_process_$r.json" "$OUT"/stack_*_"$r".json; do [ -f "$f" ] && reports+=("$f"); done
done
"$PY" deploy/gpu/compare_reports.py "${reports[@]}" | tee "$OUT/compare.txt"
echo "reports in $OUT"
