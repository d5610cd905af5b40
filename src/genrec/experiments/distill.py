"""``genrec distill``: train a shallow student under a frozen deep teacher (SLMRec; the training
is :class:`~genrec.training.tasks.distill.DistillTask` under the usual
:class:`~genrec.training.trainer.Trainer`), then leave an ordinary student checkpoint.

The run folder is what ``genrec train`` writes, with three differences:

- ``best/`` holds the student alone (``model.json`` + ``model.safetensors`` of a plain backbone),
  so ``genrec eval``/``recommend``/``serve`` take it as any checkpoint. While training, the trainer
  keeps the student with the distillation heads (projections, adapters) in ``best/`` and ``last/``;
  :func:`export_student` rewrites ``best/`` once the best student has been tested. ``last/`` keeps
  the heads, for ``--resume``.
- ``steps.jsonl`` has one line per step with each loss term (``retrieval_loss``,
  ``distill_cosine``, ``distill_l2``, ``distill_supervision``, ``distill_logits`` when on, ``total_loss``); ``log.jsonl`` their
  epoch means.
- ``metrics.json`` adds ``teacher`` (its validation and test metrics on the same split, evaluated
  by the same full-catalogue protocol) and ``parameters`` (total, non-embedding, trainable) of both.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path

import torch

from genrec import checkpoint as ckpt
from genrec import jsonio
from genrec.config import ExperimentConfig
from genrec.data.task_data import load_data
from genrec.data.user_features import with_user_features
from genrec.errors import ConfigError
from genrec.experiments.run_folder import claim
from genrec.training.strategy import make_strategy
from genrec.training.tasks.distill import DistillTask, load_teacher, parameter_counts
from genrec.training.trainer import Trainer


def distill(cfg: ExperimentConfig, out_dir: str | Path, resume: bool = False, overwrite: bool = False) -> dict:
    """Distil ``cfg.distill.teacher`` into the student ``cfg`` describes, into ``out_dir``; returns
    the metrics.json content. ``out_dir`` is claimed as ``genrec train`` claims it (rank 0 alone
    under torchrun). ``cfg`` is not modified."""
    if not cfg.distill.teacher:
        raise ConfigError("distillation needs a teacher checkpoint: --teacher CKPT (or distill.teacher)")
    owner = os.environ.get("RANK", "0") == "0"
    with claim(out_dir, resume, overwrite) if owner else contextlib.nullcontext():
        return _distill(copy.deepcopy(cfg), Path(out_dir), resume)


def _distill(cfg: ExperimentConfig, out: Path, resume: bool) -> dict:
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    strategy = make_strategy(cfg.train)
    clean = False  # an error on this rank: no barrier at teardown (see distributed.teardown)
    try:
        data = load_data(cfg)  # behaviours and user attributes, as build_task gives every task
        if data.user_tokens is None and cfg.data.user_features:  # a teacher may read user attributes the student does not
            data = with_user_features(data, cfg.data)
        teacher, temperature = load_teacher(cfg.distill.teacher, data)
        trainer = Trainer(cfg, out, DistillTask(cfg, data, teacher, temperature), strategy)
        result = trainer.fit(resume=resume)
        if trainer.is_main:
            export_student(trainer)
            add_teacher(trainer, teacher, result)
            jsonio.write_json(out / "metrics.json", result)
        clean = True
        return result
    finally:
        strategy.teardown(clean)


def export_student(trainer: Trainer) -> None:
    """Rewrite ``best/`` as the student's own checkpoint (the trainer's model holds the best
    weights: :meth:`Trainer.finish` loaded them to test them)."""
    student = trainer.model.student
    ckpt.write_atomic_dir(trainer.out / "best", lambda folder: ckpt.fill_model(
        folder, student, list(trainer.task.data.item_ids), trainer.cfg.to_dict(), metadata=trainer.item_metadata))


def add_teacher(trainer: Trainer, teacher, result: dict) -> dict:
    """Add the teacher's metrics on the same split and protocol, and both models' sizes."""
    teacher.to(trainer.strategy.device)  # (it moved with the batches only when a term that runs it was on)
    with torch.no_grad():
        valid, test = (trainer.task.evaluate(teacher, split, trainer.strategy.device)["metrics"] for split in ("valid", "test"))
    result["teacher"] = {"checkpoint": trainer.cfg.distill.teacher, "model": teacher.config.name,
                         "num_layers": teacher.config.num_layers, "valid": valid, "test": test}
    result["parameters"] = {"student": parameter_counts(trainer.model.student), "teacher": parameter_counts(teacher)}
    return result
