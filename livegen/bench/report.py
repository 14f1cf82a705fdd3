"""What every scenario reports: latency series, the machine it ran on, its results as JSON and markdown."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from livegen.cache import processor_name

BOOTSTRAP_RESAMPLES = 2000


@dataclass
class Series:
    name: str
    ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.ms)

        def pct(q: float) -> float:
            return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

        return {"n": len(ordered), "p50_ms": round(statistics.median(ordered), 2),
                "p95_ms": round(pct(0.95), 2), "p99_ms": round(pct(0.99), 2)}


@dataclass
class Rounds:
    """One system's samples, kept per round of an interleaved run (A, B, C, A, B, C, ...)."""

    name: str
    rounds: list[list[float]] = field(default_factory=list)

    def series(self) -> Series:
        return Series(self.name, [ms for block in self.rounds for ms in block])


def ratio_interval(a: Rounds, b: Rounds, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """median(a) / median(b), with a bootstrap interval over rounds: rounds are drawn with replacement,
    the same round indices for both systems (they ran side by side), and the ratio recomputed."""
    pairs = min(len(a.rounds), len(b.rounds))
    if pairs == 0:
        raise ValueError(f"no rounds to compare for {a.name} and {b.name}")
    a_rounds, b_rounds = a.rounds[:pairs], b.rounds[:pairs]

    def ratio(indices) -> float:
        return float(np.median([ms for i in indices for ms in a_rounds[i]]) /
                     np.median([ms for i in indices for ms in b_rounds[i]]))

    rng = np.random.default_rng(seed)
    draws = sorted(ratio(rng.integers(0, pairs, pairs)) for _ in range(BOOTSTRAP_RESAMPLES))
    tail = (1 - level) / 2
    return {"ratio": round(ratio(range(pairs)), 4), "low": round(draws[int(tail * len(draws))], 4),
            "high": round(draws[min(len(draws) - 1, int((1 - tail) * len(draws)))], 4), "rounds": pairs,
            "level": level}


def machine() -> dict[str, object]:
    cpu = processor_name()
    import diffusers
    import transformers

    from livegen import __version__

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "cuda": torch.version.cuda, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "livegen": __version__}


def machine_line(m: dict) -> str:
    """The machine in a table's caption: 'AMD EPYC (2 cores), GPU: none'."""
    return f"{m['cpu']} ({m['cores']} cores), GPU: {m['gpu'] or 'none'}"


def header(scenario: str) -> dict[str, object]:
    """The fields every result file starts with: the scenario, the exact command, the machine."""
    return {"scenario": scenario, "command": " ".join(["livegen", *sys.argv[1:]]), "machine": machine()}


def save(results: dict, markdown: str, output: Path) -> None:
    """Write <scenario>.json and <scenario>.md into `output`."""
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{results['scenario']}.json").write_text(json.dumps(results, indent=2))
    (output / f"{results['scenario']}.md").write_text(markdown)
