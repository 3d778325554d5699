#!/usr/bin/env bash
# The serving layer's cost on the benchmark engine (no GPU): the engine alone in-process, then both
# tiers in several configurations over the same engine; prints throughput, the ratio to in-process,
# added TTFT and each tier's CPU per output token and per request. Reports land in OUT.
#
#   bash deploy/bench/serving_layer.sh       # CONCURRENCY=1,16,64,256 DURATION=8 WARMUP=2
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
CONCURRENCY="${CONCURRENCY:-1,16,64,256}"
DURATION="${DURATION:-8}"
WARMUP="${WARMUP:-2}"
OUT="${OUT:-$(mktemp -d -t splitserve-serving-bench.XXXXXX)}"
MODEL=(${MODEL_DIR:+--model "$MODEL_DIR"})
COMMON=("${MODEL[@]}" --engine bench --max-batch-size 256 --warmup "$WARMUP" --duration "$DURATION" --no-progress)
LOAD=(--concurrency "$CONCURRENCY" --input-len 128 --output-len 128)

# name | tokenizer flags | generator flags | tokenizer processes
VARIANTS=(
  "stream|--generator-transport=stream||1"
  "many|||1"
  "many-interval20|--stream-interval-ms=20||1"
  "many-interval20-engine-process|--stream-interval-ms=20|--engine-process|1"
  "many-interval20-engine-process-3tok|--stream-interval-ms=20|--engine-process|3"
)

flags() {  # flags <--tokenizer-arg|--generator-arg> "space separated flags"
  for flag in $2; do printf '%s\n' "$1=$flag"; done
}

"$PY" -m splitserve bench --in-process "${COMMON[@]}" "${LOAD[@]}" --json "$OUT/in-process.json"
for variant in "${VARIANTS[@]}"; do
  IFS='|' read -r name tok gen tokenizers <<<"$variant"
  mapfile -t extra < <(flags --tokenizer-arg "$tok"; flags --generator-arg "$gen"; echo "--tokenizers=$tokenizers")
  "$PY" -m splitserve bench "${COMMON[@]}" "${LOAD[@]}" "${extra[@]}" --json "$OUT/stack-$name.json" \
    --plot "$OUT/stack-$name.png"
  # Per-request cost: one output token each, so the request's fixed work dominates.
  "$PY" -m splitserve bench "${COMMON[@]}" --concurrency 256 --input-len 128 --output-len 1 "${extra[@]}" \
    --json "$OUT/stack-$name-osl1.json"
done

"$PY" - "$OUT" "${VARIANTS[@]}" <<'PYEOF'
import json, sys
out, variants = sys.argv[1], [v.split("|")[0] for v in sys.argv[2:]]
alone = {r["level"]: r for r in json.load(open(f"{out}/in-process.json"))["in_process"]}
print(f"{'variant':<38}{'level':<17}{'tok/s':>8}{'ratio':>7}{'TTFT+ms':>9}"
      f"{'tok µs/tok':>11}{'gen µs/tok':>11}{'tok ms/req*':>13}")
for name in variants:
    per_request = json.load(open(f"{out}/stack-{name}-osl1.json"))["stack"][0]["cpu"]["tokenizer"]["ms_per_request"]
    for r in json.load(open(f"{out}/stack-{name}.json"))["stack"]:
        a = alone[r["level"]]
        ratio = r["output_tokens_per_s"] / a["output_tokens_per_s"]
        added = r["ttft_ms"]["p50"] - a["ttft_ms"]["p50"]
        cpu = r["cpu"]
        print(f"{name:<38}{r['level']:<17}{r['output_tokens_per_s']:>8.0f}{ratio:>7.2f}{added:>9.1f}"
              f"{cpu['tokenizer']['us_per_output_token']:>11.1f}{cpu['generator']['us_per_output_token']:>11.1f}"
              f"{per_request:>13.2f}")
PYEOF
echo "* tokenizer CPU per request at 256 streams with 1 output token each"
echo "reports: $OUT"
