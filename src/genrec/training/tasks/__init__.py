"""What a run trains for. A task builds its model from the resolved spec, gives the training
batches, the loss of one step and its evaluation; the trainer drives any task the same way.

- :class:`~genrec.training.tasks.retrieval.RetrievalTask` — next item over item-only sequences;
- :class:`~genrec.training.tasks.interleaved.RankingTask` — the ranking head over interleaved
  item/action tokens;
- :class:`~genrec.training.tasks.interleaved.UnifiedTask` — retrieval at action tokens + ranking at
  item tokens in one model (UniGRF: enhancer, weighter);
- :class:`~genrec.training.tasks.din.DINTask` — DIN, the classic target-attention ranker;
- :class:`~genrec.training.tasks.popularity.PopularityTask` — the popularity baseline (closed form);
- :class:`~genrec.training.tasks.distill.DistillTask` — retrieval of a shallow student under a
  frozen deep teacher, layer-aligned (SLMRec).

Adding a task: a class with the :class:`Task` members, and one line in :func:`build_task`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from genrec.data.batches import TrainBatches
from genrec.data.task_data import task_data
from genrec.data.prepare import SequenceData
from genrec.errors import ConfigError
from genrec.models import Model


class Task(Protocol):
    kind: str
    """``retrieval``, ``ranking`` or ``unified`` (what metrics.json's protocol reports)."""
    all_parameters_used: bool
    """Whether every parameter gets a gradient at every step (DDP needs to know)."""
    trainable: bool
    """False for models fit in closed form when built (popularity): no epochs are run."""

    def build_model(self) -> Model:
        """A fresh model for this task (initialised from the current torch seed)."""

    def batches(self, include_valid: bool = False) -> TrainBatches:
        """Training batches; ``include_valid`` also trains on the validation block (refit)."""

    def loss(self, model: Model, batch, epoch: int) -> tuple[torch.Tensor, dict]:
        """(loss of one step, numbers to log per step)."""

    def evaluate(self, model: Model, split: str, device) -> dict:
        """{"metrics", "protocol"} on ``split`` (valid/test)."""

    def describe(self) -> dict:
        """Protocol lines for metrics.json: task, labels, loss."""

    def state_dict(self) -> dict:
        """Step-to-step state besides the model (JSON-able), saved with ``last/``."""

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` on resume."""


def select_score(metrics: dict, select_metric: str) -> float:
    """Validation score used for selection: a metric, or the sum of several (``ndcg@10+auc``)."""
    total = 0.0
    for part in select_metric.split("+"):
        value = metrics.get(part.strip())
        if value is None:
            raise ConfigError(f"eval.select_metric={select_metric!r}: {part.strip()!r} is not computed for this task")
        if isinstance(value, float) and np.isnan(value):
            raise ConfigError(f"eval.select_metric={select_metric!r}: {part.strip()!r} is undefined on this validation "
                              "split (e.g. AUC with only one class); choose another metric or a larger eval.holdout")
        total += value
    return total


def build_task(cfg, data: SequenceData) -> Task:
    """The task of ``cfg.task.kind`` (and, for ranking, of the model: DIN or interleaved)."""
    from genrec.training.tasks.din import DINTask
    from genrec.training.tasks.interleaved import RankingTask, UnifiedTask
    from genrec.training.tasks.popularity import PopularityTask
    from genrec.training.tasks.retrieval import RetrievalTask

    kind = cfg.task.kind
    data = task_data(data, cfg)  # behaviours (data.behaviour) and user attributes (model.user_features)
    if cfg.distill.teacher:  # a distilled student: evaluated here; trained (with its teacher) by genrec.experiments.distill
        from genrec.training.tasks.distill import DistillTask

        return DistillTask(cfg, data)
    if cfg.model.name == "din":
        if kind != "ranking":
            raise ConfigError("model.name=din ranks only: use it with task.kind=ranking")
        return DINTask(cfg, data)
    if cfg.model.name == "popularity":
        if kind != "retrieval":
            raise ConfigError("model.name=popularity is a retrieval baseline: use it with task.kind=retrieval")
        return PopularityTask(cfg, data)
    tasks = {"retrieval": RetrievalTask, "ranking": RankingTask, "unified": UnifiedTask}
    if kind not in tasks:
        raise ConfigError(f"task.kind={kind!r} is not trained by one Trainer (a cascade trains two runs; see genrec.experiments)")
    return tasks[kind](cfg, data)
