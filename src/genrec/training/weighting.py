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
- :class:`GradientSpeedWeighter` (``gradient``): UniGRF's weighter as its description reads: each
  task's learning speed is the rate of change of its gradient norm on the shared trunk (every
  backbone parameter both losses reach, embedding tables excluded), G_k = ‖∂L_k/∂θ_trunk‖, measured
  every ``every`` steps; r_k = mean G_k over the last ``window`` measurements / mean over the
  ``window`` before. A task whose gradients shrink more slowly (larger r_k) is learning more slowly
  and gets more weight: w_k = base_k·K·exp(r_k / T) / Σ_j exp(r_j / T). Base weights until two
  windows are full.

Weighters with a history (``dwa``, ``gradient``) save it with the run's ``last/`` checkpoint
(:meth:`ConstantWeighter.state_dict`), so a resumed single-process run weighs its steps as the
uninterrupted one. Under DDP each rank keeps the history of its own shard and a resume restores
rank 0's on every rank. Non-finite values (a skipped step) are not recorded.
"""

from __future__ import annotations

import math
from collections import deque

import torch


class ConstantWeighter:
    needs_shared = False
    """Whether :meth:`combine` needs the shared parameters."""

    def __init__(self, base: dict[str, float]):
        self.base = dict(base)
        self.measured: dict[str, float] = {}
        """What the last :meth:`combine` measured, for the step log (gradient norms)."""

    def combine(self, losses: dict[str, torch.Tensor], shared: list[torch.nn.Parameter] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """-> (weighted sum, the weights used)."""
        weights = dict(self.base)
        return sum(weights[k] * v for k, v in losses.items()), weights

    def state_dict(self) -> dict:
        """The history the weights depend on (JSON-able)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def gradient_norm(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> float:
    """‖∂loss/∂params‖ over all of ``params`` (0 when none is reached), one host sync; the graph is
    kept for the step's own backward."""
    grads = [g for g in torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True) if g is not None]
    return float(torch.stack([g.detach().float().norm() for g in grads]).norm()) if grads else 0.0


def _speed_weights(base: dict[str, float], history: dict[str, deque], window: int, temperature: float) -> dict[str, float]:
    """w_k = base_k·K·exp(r_k / T) / Σ_j exp(r_j / T), r_k = mean of the last ``window`` values of
    history[k] / mean of the ``window`` before; the base weights until both windows are full."""
    if not all(len(h) == 2 * window for h in history.values()):
        return dict(base)
    ratios = {}
    for k, h in history.items():
        vals = list(h)
        before, recent = sum(vals[:window]), sum(vals[window:])
        ratios[k] = recent / before if before > 0 else 1.0
    z = sum(math.exp(r / temperature) for r in ratios.values())
    return {k: base[k] * len(ratios) * math.exp(r / temperature) / z for k, r in ratios.items()}


class DWAWeighter(ConstantWeighter):
    def __init__(self, base: dict[str, float], temperature: float = 2.0, window: int = 20):
        super().__init__(base)
        self.temperature, self.window = temperature, window
        self.history: dict[str, deque] = {k: deque(maxlen=2 * window) for k in base}

    def current(self) -> dict[str, float]:
        """Weights from the loss history so far (the base weights until two windows are full)."""
        return _speed_weights(self.base, self.history, self.window, self.temperature)

    def combine(self, losses, shared=None):
        weights = self.current()
        values = {k: float(v.detach()) for k, v in losses.items()}
        if all(math.isfinite(x) for x in values.values()):  # a skipped non-finite step leaves no trace
            for k, x in values.items():
                self.history[k].append(x)
        return sum(weights[k] * v for k, v in losses.items()), weights

    def state_dict(self) -> dict:
        return {"history": {k: list(h) for k, h in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        for k, vals in (state.get("history") or {}).items():
            self.history[k].clear()
            self.history[k].extend(vals)


class GradNormWeighter(ConstantWeighter):
    needs_shared = True

    def combine(self, losses, shared=None):
        if not shared:
            raise ValueError("GradNormWeighter needs the shared parameters")
        norms = {k: gradient_norm(v, shared) or 1.0 for k, v in losses.items()}
        inv = {k: self.base[k] / n for k, n in norms.items()}
        z = sum(inv.values()) or 1.0
        weights = {k: len(inv) * w / z for k, w in inv.items()}
        return sum(weights[k] * v for k, v in losses.items()), weights


class GradientSpeedWeighter(DWAWeighter):
    """Weights from the rate of change of each task's gradient norm on the shared trunk."""

    needs_shared = True

    def __init__(self, base: dict[str, float], temperature: float = 2.0, window: int = 20, every: int = 1):
        super().__init__(base, temperature, window)
        self.every, self.steps = every, 0

    def combine(self, losses, shared=None):
        if not shared:
            raise ValueError("GradientSpeedWeighter needs the shared parameters")
        weights = self.current()
        self.measured = {}
        if self.steps % self.every == 0:  # one extra backward pass per task through the trunk
            norms = {k: gradient_norm(v, shared) for k, v in losses.items()}
            self.measured = {f"grad_norm_{k}": n for k, n in norms.items()}
            if all(math.isfinite(n) for n in norms.values()):
                for k, n in norms.items():
                    self.history[k].append(n)
        self.steps += 1
        return sum(weights[k] * v for k, v in losses.items()), weights

    def state_dict(self) -> dict:
        return {**super().state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.steps = int(state.get("steps", 0))


def build_weighter(task_cfg) -> ConstantWeighter:
    base = {"retrieval": task_cfg.retrieval_weight, "ranking": task_cfg.ranking_weight}
    if task_cfg.weighter == "dwa":
        return DWAWeighter(base, task_cfg.dwa_temperature, task_cfg.dwa_window)
    if task_cfg.weighter == "gradient":
        return GradientSpeedWeighter(base, task_cfg.dwa_temperature, task_cfg.dwa_window, task_cfg.grad_every)
    if task_cfg.weighter == "gradnorm":
        return GradNormWeighter(base)
    return ConstantWeighter(base)
