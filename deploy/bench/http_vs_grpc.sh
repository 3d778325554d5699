#!/usr/bin/env bash
# The OpenAI-compatible HTTP API against the gRPC API on the benchmark engine (no GPU), in interleaved
# rounds: tokenizer CPU per streamed token (ISL/OSL 128/128), per request (OSL 1 at a fixed Poisson rate,
# so the request's fixed work dominates and both APIs share the tier's idle cost alike) and TTFT at one
# stream. Both APIs run in the same tokenizer process (`--api` only picks which one the bench drives).
# Reports land in OUT; the last lines are the table BENCHMARKS.md quotes.
#
#   bash deploy/bench/http_vs_grpc.sh       # ROUNDS=2 CONCURRENCY=1,16 REQUEST_RATE=100 DURATION=10
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
ROUNDS="${ROUNDS:-2}"
CONCURRENCY="${CONCURRENCY:-1,16}"
REQUEST_RATE="${REQUEST_RATE:-100}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
OUT="${OUT:-$(mktemp -d -t splitserve-http-bench.XXXXXX)}"
MODEL=(${MODEL_DIR:+--model "$MODEL_DIR"})
COMMON=("${MODEL[@]}" --engine bench --max-batch-size 256 --warmup "$WARMUP" --duration "$DURATION" --no-progress)

for round in $(seq 1 "$ROUNDS"); do
  for api in grpc openai; do
    "$PY" -m splitserve bench --api "$api" "${COMMON[@]}" --concurrency "$CONCURRENCY" --input-len 128 \
      --output-len 128 --json "$OUT/$api-$round.json"
    "$PY" -m splitserve bench --api "$api" "${COMMON[@]}" --request-rate "$REQUEST_RATE" --concurrency 64 \
      --input-len 128 --output-len 1 --json "$OUT/$api-$round-osl1.json"
  done
done

"$PY" - "$OUT" "$ROUNDS" <<'PYEOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def levels(name):
    return json.load(open(f"{out}/{name}.json"))["stack"]
print(f"{'api':<8}{'level':<17}{'tok/s':>8}{'TTFT p50 ms':>13}{'tok µs/token':>14}{'tok ms/req (OSL 1)':>20}"
      f"{'client µs/token':>17}")
for api in ("grpc", "openai"):
    runs = [levels(f"{api}-{r}") for r in range(1, rounds + 1)]
    per_request = statistics.median(levels(f"{api}-{r}-osl1")[0]["cpu"]["tokenizer"]["ms_per_request"]
                                    for r in range(1, rounds + 1))
    for i, level in enumerate(runs[0]):
        same = [run[i] for run in runs]
        med = lambda f: statistics.median(f(x) for x in same)
        print(f"{api:<8}{level['level']:<17}{med(lambda x: x['output_tokens_per_s']):>8.0f}"
              f"{med(lambda x: x['ttft_ms']['p50']):>13.1f}"
              f"{med(lambda x: x['cpu']['tokenizer']['us_per_output_token']):>14.1f}{per_request:>20.2f}"
              f"{med(lambda x: x['cpu']['client']['us_per_output_token']):>17.1f}")
PYEOF
echo "medians of $ROUNDS interleaved rounds; reports in $OUT"
