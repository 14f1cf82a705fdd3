"""Output checkers the tests plug in by import path (`--output-checker tests.checkers:RecordingChecker`)."""

from __future__ import annotations

import numpy as np
import torch


class RecordingChecker:
    """Flags about half the frames, by the parity of their pixel sum, and keeps every frame it saw."""

    def __init__(self) -> None:
        self.flagged: list[np.ndarray] = []
        self.passed: list[np.ndarray] = []

    def __call__(self, images: torch.Tensor) -> list[str | None]:
        verdicts: list[str | None] = []
        for image in images.cpu().numpy():
            flag = int(image.astype(np.int64).sum()) % 2 == 1
            (self.flagged if flag else self.passed).append(image.copy())
            verdicts.append("test_flag" if flag else None)
        return verdicts

    def clear(self) -> None:
        self.flagged.clear()
        self.passed.clear()
