"""PNG plots of benchmark results (matplotlib without a display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from livegen.bench.report import Series


def latency_cdf(series: list[Series], path: Path, title: str) -> None:
    """One cumulative distribution of frame latency per system, on a log time axis."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for s in series:
        ordered = sorted(s.ms)
        ax.step(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], where="post", label=s.name)
    ax.set(xscale="log", xlabel="frame latency (ms, log scale)", ylabel="share of frames", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_curves(rows: list[dict], path: Path, title: str) -> None:
    """Aggregate frames/s and p99 latency against concurrent sessions, one line per setting."""
    fig, (fps_ax, p99_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for setting in dict.fromkeys(row["setting"] for row in rows):
        points = [row for row in rows if row["setting"] == setting]
        sessions = [row["sessions"] for row in points]
        fps_ax.plot(sessions, [row["frames_per_s"] for row in points], marker="o", label=setting)
        p99_ax.plot(sessions, [row["latency"]["p99_ms"] for row in points], marker="o", label=setting)
    fps_ax.set(xscale="log", xlabel="concurrent sessions", ylabel="frames per second, all sessions")
    p99_ax.set(xscale="log", yscale="log", xlabel="concurrent sessions", ylabel="frame latency p99 (ms)")
    for ax in (fps_ax, p99_ax):
        ax.set_xticks(sorted({row["sessions"] for row in rows}), labels=sorted({row["sessions"] for row in rows}))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
