"""Loss weighters for the unified model (UniGRF's gradient-guided adaptive weighter, PAPERS.md §2).

A weighter turns the two task losses of a step into one; it sees every step's losses and reports
the weights it used (the trainer logs them per step).

- :class:`ConstantWeighter`: fixed weights.
- :class:`DWAWeighter`: learning-speed weights in the Dynamic Weight Average form
  w_k = K·exp(r_k / T) / Σ_j exp(r_j / T) with r_k = L_k(recent) / L_k(before): the task whose loss
  falls more slowly gets more weight. The paper's exact formula is not public; per-step losses are
  noisy, so r_k compares the mean of the last ``window`` steps with the mean of the ``window`` steps
  before (DWA's epoch-level ratio at step granularity). Base weights multiply the result.
- :class:`GradNormWeighter`: w_k ∝ 1 / ‖∂L_k/∂θ_shared‖ (θ_shared: the parameters both tasks share
  last), normalised to sum to K, so neither task's gradient dominates the shared layers.
"""

from __future__ import annotations

import math
from collections import deque

import torch


class ConstantWeighter:
    def __init__(self, base: dict[str, float]):
        self.base = dict(base)

    def combine(self, losses: dict[str, torch.Tensor], shared: list[torch.nn.Parameter] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """-> (weighted sum, the weights used)."""
        weights = dict(self.base)
        return sum(weights[k] * v for k, v in losses.items()), weights


class DWAWeighter(ConstantWeighter):
    def __init__(self, base: dict[str, float], temperature: float = 2.0, window: int = 20):
        super().__init__(base)
        self.temperature, self.window = temperature, window
        self.history: dict[str, deque] = {k: deque(maxlen=2 * window) for k in base}

    def current(self) -> dict[str, float]:
        """Weights from the loss history so far (the base weights until two windows are full)."""
        full = all(len(h) == 2 * self.window for h in self.history.values())
        if not full:
            return dict(self.base)
        ratios = {}
        for k, h in self.history.items():
            vals = list(h)
            before, recent = sum(vals[: self.window]), sum(vals[self.window :])
            ratios[k] = recent / before if before > 0 else 1.0
        z = sum(math.exp(r / self.temperature) for r in ratios.values())
        K = len(ratios)
        return {k: self.base[k] * K * math.exp(r / self.temperature) / z for k, r in ratios.items()}

    def combine(self, losses, shared=None):
        weights = self.current()
        for k, v in losses.items():
            self.history[k].append(float(v.detach()))
        return sum(weights[k] * v for k, v in losses.items()), weights


class GradNormWeighter(ConstantWeighter):
    def combine(self, losses, shared=None):
        if not shared:
            raise ValueError("GradNormWeighter needs the shared parameters")
        norms = {}
        for k, v in losses.items():
            grads = torch.autograd.grad(v, shared, retain_graph=True, allow_unused=True)
            norms[k] = math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None)) or 1.0
        inv = {k: self.base[k] / n for k, n in norms.items()}
        z = sum(inv.values()) or 1.0
        weights = {k: len(inv) * w / z for k, w in inv.items()}
        return sum(weights[k] * v for k, v in losses.items()), weights


def build_weighter(task_cfg) -> ConstantWeighter:
    base = {"retrieval": task_cfg.retrieval_weight, "ranking": task_cfg.ranking_weight}
    if task_cfg.weighter == "dwa":
        return DWAWeighter(base, task_cfg.dwa_temperature, task_cfg.dwa_window)
    if task_cfg.weighter == "gradnorm":
        return GradNormWeighter(base)
    return ConstantWeighter(base)
