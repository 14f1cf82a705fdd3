"""The training loop every stage shares: deterministic per-step randomness, resumable checkpoints,
a progress bar and a loss log.

Randomness is drawn from a generator seeded by (seed, step), so a run stopped and resumed from a
checkpoint takes the same batches, noise and timesteps as one that never stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

log = logging.getLogger(__name__)


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class Stage:
    """One training stage's folder: `checkpoint.pt` to resume from and `log.jsonl` of losses."""

    folder: Path

    @property
    def checkpoint(self) -> Path:
        return self.folder / "checkpoint.pt"

    def resume(self, **objects: Any) -> int:
        """Load every object's state from the checkpoint; returns the step to continue from."""
        if not self.checkpoint.is_file():
            return 0
        state = torch.load(self.checkpoint, map_location="cpu", weights_only=False)
        for name, obj in objects.items():
            obj.load_state_dict(state[name])
        log.info("resumed %s at step %d", self.folder.name, state["step"])
        return state["step"]

    def save(self, step: int, **objects: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {name: obj.state_dict() for name, obj in objects.items()}
        state["step"] = step
        partial = self.checkpoint.with_suffix(".tmp")
        torch.save(state, partial)
        os.replace(partial, self.checkpoint)  # a crash mid-write never leaves a broken checkpoint


def run(
    stage: Stage,
    steps: int,
    train_step: Callable[[int, torch.Generator], dict[str, float]],
    objects: dict[str, Any],
    seed: int,
    save_every: int = 200,
    progress: bool = True,
) -> int:
    """Run train_step from the last checkpoint up to `steps`; returns the steps done in this call."""
    start = stage.resume(**objects)
    if start >= steps:
        return 0
    stage.folder.mkdir(parents=True, exist_ok=True)
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=stage.folder.name, disable=not progress)
    smoothed: dict[str, float] = {}
    began = time.perf_counter()
    with (stage.folder / "log.jsonl").open("a") as logfile:
        for step in bar:
            losses = train_step(step, step_generator(seed, step))
            for key, value in losses.items():
                smoothed[key] = value if key not in smoothed else 0.98 * smoothed[key] + 0.02 * value
            bar.set_postfix({k: f"{v:.4f}" for k, v in smoothed.items()})
            done = step + 1
            if done % 50 == 0 or done == steps:
                record = {"step": done, "seconds": round(time.perf_counter() - began, 1), **losses}
                logfile.write(json.dumps(record) + "\n")
                logfile.flush()
            if done % save_every == 0 or done == steps:
                stage.save(done, **objects)
    return steps - start
