"""The latency-vs-throughput plot across load levels (matplotlib, optional extra `bench`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_levels(series: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    """One line per series: median TTFT and inter-token latency against output tokens/s."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, levels in series.items():
        xs = [lv["output_tokens_per_s"] for lv in levels]
        for ax, key in zip(axes, ("ttft_ms", "itl_ms"), strict=True):
            ys = [lv[key]["p50"] for lv in levels]
            ax.plot(xs, ys, marker="o", label=name)
            for x, y, lv in zip(xs, ys, levels, strict=True):
                ax.annotate(str(lv["rate"] or lv["concurrency"]), (x, y), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
    for ax, label in zip(axes, ("TTFT p50 (ms)", "inter-token latency p50 (ms)"), strict=True):
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
