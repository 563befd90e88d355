"""The learning rate over a run, and how many epochs a time budget allows.

``cosine`` (the default): a linear warm-up, then a cosine decay that reaches ``min_lr`` at the
end of the run's budget, whether that is ``epochs`` or ``max_minutes`` (the number of epochs
the time allows is re-estimated after every epoch from the mean epoch time so far).
``plateau``: the same warm-up, then the rate is multiplied by ``lr_factor`` whenever the
validation loss has not improved for ``lr_patience`` epochs; training stops below ``min_lr``.

Progress is counted in epochs, fractional within an epoch, so the rate changes every step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mlff_distiller.config import TrainingConfig


def planned_epochs(
    max_epochs: int, max_minutes: float | None, epoch_seconds: Sequence[float]
) -> int:
    """Epochs the run will have: ``max_epochs``, or fewer if the time budget says so.

    Parameters
    ----------
    max_epochs
        The epoch budget.
    max_minutes
        The time budget (None: none).
    epoch_seconds
        Wall time of every epoch so far, s (training and validation).

    Returns
    -------
    int
        ``max_epochs``, or the whole epochs of the mean duration so far that fit the time
        budget, if fewer (at least 1).
    """
    if max_minutes is None or not epoch_seconds:
        return max_epochs
    mean = sum(epoch_seconds) / len(epoch_seconds)
    return max(1, min(max_epochs, int(60.0 * max_minutes / mean)))


class LearningRate:
    """The learning rate at any point of training (see the module docstring).

    Parameters
    ----------
    config
        ``lr``, ``min_lr``, ``warmup_epochs``, ``lr_schedule``, ``lr_patience`` and
        ``lr_factor`` are used.
    """

    def __init__(self, config: TrainingConfig) -> None:
        self.config = config
        self.plateau_scale = 1.0
        self.bad_epochs = 0

    def at(self, progress: float, total_epochs: float) -> float:
        """The rate after ``progress`` epochs of a run of ``total_epochs``."""
        cfg = self.config
        warmup = min(cfg.warmup_epochs, 0.5 * total_epochs)
        factor = min(1.0, progress / warmup) if warmup > 0 else 1.0
        if cfg.lr_schedule == "plateau":
            return cfg.lr * self.plateau_scale * factor
        if progress < warmup:
            return cfg.lr * factor
        t = min(1.0, (progress - warmup) / max(total_epochs - warmup, 1e-12))
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))

    def end_epoch(self, improved: bool) -> None:
        """Count an epoch for ``plateau``: lower the rate after too many without progress."""
        if self.config.lr_schedule != "plateau":
            return
        self.bad_epochs = 0 if improved else self.bad_epochs + 1
        if self.bad_epochs > self.config.lr_patience:
            self.plateau_scale *= self.config.lr_factor
            self.bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        """Plain data for the checkpoint."""
        return {"plateau_scale": self.plateau_scale, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.plateau_scale = float(state["plateau_scale"])
        self.bad_epochs = int(state["bad_epochs"])
