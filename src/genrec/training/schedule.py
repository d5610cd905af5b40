"""Learning-rate schedules (``train.lr_schedule``, ``train.warmup_epochs``).

The rate is a function of the global step alone (epoch x steps per epoch + step in the epoch), not
an object with state: a resumed run sets the same rate at every step as an uninterrupted one, and
the refit (which trains the selected number of epochs with the same config) follows the same
curve as the run it repeats up to those epochs.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def warmup_steps(warmup_epochs: float, steps_per_epoch: int) -> int:
    """Steps of the linear warm-up: ``warmup_epochs`` epochs, rounded to whole steps (at least one
    when a warm-up is asked for at all)."""
    if warmup_epochs <= 0:
        return 0
    return max(1, round(warmup_epochs * steps_per_epoch))


def lr_factor(step: int, steps_per_epoch: int, epochs: int, schedule: str, warmup_epochs: float) -> float:
    """Multiplier of ``train.lr`` for 0-based global step ``step``.

    Warm-up: the first ``w`` steps take ``(step + 1) / w`` (the first step already moves, the
    ``w``-th reaches the full rate). ``cosine``: after the warm-up the rate falls along a half cosine,
    ``0.5 (1 + cos(pi p))`` with ``p`` the share of the steps after the warm-up done so far, to 0 at
    the end of epoch ``epochs`` (``train.epochs``, the cap: early stopping ends a run sooner without
    changing the curve). ``constant``: 1 after the warm-up."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; one of {list(SCHEDULES)}")
    warm = warmup_steps(warmup_epochs, steps_per_epoch)
    if step < warm:
        return (step + 1) / warm
    if schedule == "constant":
        return 1.0
    total = epochs * steps_per_epoch
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return 0.5 * (1.0 + math.cos(math.pi * progress))
