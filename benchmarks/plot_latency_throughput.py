"""Draws latency against throughput per engine on the H200 from the kept reports (the figure BENCHMARKS.md shows).

    python benchmarks/plot_latency_throughput.py   # writes benchmarks/h200-latency-throughput.png
"""

from __future__ import annotations

import json
from pathlib import Path

from splitserve.bench.plot import plot_levels

HERE = Path(__file__).parent
SERIES = {  # name: (report, which levels)
    "native engine, in-process": ("h200-native/native.json", "in_process"),
    "transformers engine, in-process": ("h200-native/transformers.json", "in_process"),
    "stack over native (engine process)": ("h200-stack/call3/stack_process_2.json", "stack"),
    "stack over native (engine in generator)": ("h200-stack/call2/stack_gen_1.json", "stack"),
}


def main() -> None:
    series = {name: json.loads((HERE / path).read_text())[key] for name, (path, key) in SERIES.items()}
    out = HERE / "h200-latency-throughput.png"
    plot_levels(series, out, "NVIDIA H200, Llama-3-8B shape (random bf16), ISL/OSL 128/128; labels: streams")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
