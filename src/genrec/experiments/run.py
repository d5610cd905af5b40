"""A run from a config: prepare the data, pick the execution strategy, build the task, train it
with :class:`~genrec.training.trainer.Trainer`; with ``train.refit`` also retrain on training +
validation items; a cascade config trains its two stages (:mod:`genrec.experiments.cascade`).
This is what ``genrec train`` calls.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from pathlib import Path

import yaml
from tqdm import tqdm

from genrec import jsonio
from genrec.config import ExperimentConfig
from genrec.data.prepare import SequenceData, load_prepared, prepare
from genrec.errors import ConfigError
from genrec.experiments.run_folder import claim
from genrec.training.strategy import SingleProcess, make_strategy
from genrec.training.tasks import build_task
from genrec.training.trainer import Trainer


def train(cfg: ExperimentConfig, out_dir: str | Path, resume: bool = False, overwrite: bool = False) -> dict:
    """Train an experiment into ``out_dir``; returns the metrics.json content. ``cfg`` is not
    modified. ``out_dir`` is claimed first (:func:`~genrec.experiments.run_folder.claim`: writable,
    locked for the run, refused if it holds a run unless ``resume`` or ``overwrite``); under
    torchrun rank 0 alone claims it, as it alone writes it. A cascade trains its two stages (their
    config paths are absolute, see :func:`genrec.config.load_config`)."""
    owner = os.environ.get("RANK", "0") == "0"
    with claim(out_dir, resume, overwrite) if owner else contextlib.nullcontext():
        return _train(cfg, out_dir, resume)


def _train(cfg: ExperimentConfig, out_dir: str | Path, resume: bool) -> dict:
    if cfg.task.kind == "cascade":
        from genrec.experiments.cascade import train_cascade

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return train_cascade(copy.deepcopy(cfg), out_dir, resume)
    return train_one(copy.deepcopy(cfg), out_dir, resume)


def train_one(cfg: ExperimentConfig, out_dir: str | Path, resume: bool = False, data: SequenceData | None = None) -> dict:
    """One task on one model (plus its refit when ``train.refit``), under the strategy the
    environment and config ask for (one process, DDP under torchrun, row-wise sharded table)."""
    strategy = make_strategy(cfg.train)  # (the Trainer sets train.num_threads)
    clean = False  # an error on this rank: no barrier at teardown (see distributed.teardown)
    try:
        if strategy.env.enabled and cfg.train.refit:
            raise ConfigError("train.refit and cascades run in one process; launch them without torchrun")
        trainer = make_trainer(cfg, out_dir, data, strategy)
        result = trainer.fit(resume=resume)
        if cfg.train.refit and trainer.is_main:
            add_refit(trainer, result)
            jsonio.write_json(Path(out_dir) / "metrics.json", result)
        clean = True
        return result
    finally:
        strategy.teardown(clean)


def make_trainer(cfg: ExperimentConfig, out_dir: str | Path, data: SequenceData | None = None,
                 strategy: SingleProcess | None = None) -> Trainer:
    """A :class:`Trainer` for ``cfg``: the data prepared (or given), the task built, under
    ``strategy`` (default: the one :func:`make_strategy` picks)."""
    strategy = strategy or make_strategy(cfg.train)
    data = data if data is not None else load_prepared(prepare(cfg.data))
    return Trainer(cfg, out_dir, build_task(cfg, data), strategy)


def add_refit(trainer: Trainer, result: dict) -> dict:
    """Add ``test_refit`` and its protocol line to a metrics.json dict: a fresh model trained on
    training + validation items for the selected number of epochs (same seed), tested once.
    Deterministic, so an interrupted refit simply runs again to the same result."""
    epochs = result["best_epoch"]
    sub = Trainer(trainer.cfg, trainer.out / "refit", build_task(trainer.cfg, trainer.task.data),
                  SingleProcess(trainer.strategy.device), include_valid=True)
    for epoch in range(epochs):
        loss = sub.train_epoch(epoch)["loss"]
        tqdm.write(f"refit epoch {epoch + 1}/{epochs}: loss {'n/a' if loss is None else f'{loss:.4f}'}", file=sys.stderr)
    sub.save("model", with_state=False)
    result["test_refit"] = sub.evaluate("test")["metrics"]
    result["protocol"]["refit"] = (
        f"test_refit: a fresh model trained on training + validation items for the selected "
        f"{epochs} epochs (same seed), then tested once"
    )
    return result
