#!/usr/bin/env bash
# On a CPU host: the native engine beside the transformers engine, in-process, default model (fp32),
# one stream and 16 streams, 32-token prompts and 64 new tokens, one after the other in one run.
#   bash deploy/bench/cpu_engines.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-$(mktemp -d -t splitserve-cpu-engines.XXXXXX)}"
PY="${PYTHON:-.venv/bin/python}"
for ENGINE in native transformers; do
  "$PY" -m splitserve.bench --in-process --engine "$ENGINE" --max-batch-size 16 --concurrency 1,16 \
    --input-len 32 --output-len 64 --warmup 5 --duration "${DURATION:-40}" --stagger 2 --no-progress \
    --json "$OUT/$ENGINE.json"
done
echo "reports in $OUT"
