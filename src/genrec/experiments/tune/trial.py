"""One tuning trial: an ordinary run folder (config.yaml, log.jsonl, best/, last/, metrics.json),
trained and selected on validation only.

The test split is sealed, not just skipped: the trial's task refuses to evaluate anything but
validation, and its trainer's ``finish`` validates the best checkpoint instead of testing it, so
no trial's metrics.json has a ``test`` entry. Each validation reports the selection metric to
Optuna; when the pruner says stop, the run stops there (``last/`` and log.jsonl hold that epoch),
its metrics.json records ``pruned_at_epoch`` and the trial is recorded as pruned.

A trial that continues an interrupted one (its ``resumes`` user attribute, set by
:func:`recover_interrupted`) takes over the interrupted trial's folder, renamed to its own number,
and resumes from its ``last/`` checkpoint: the training resumes exactly (see
:mod:`genrec.training.trainer`), and the epochs already validated are reported again so that the
pruner sees the whole curve.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from pathlib import Path

import optuna

from genrec import checkpoint as ckpt
from genrec import jsonio
from genrec.config import ExperimentConfig
from genrec.data.prepare import SequenceData
from genrec.errors import GenrecError
from genrec.experiments.run_folder import claim
from genrec.experiments.tune.space import Space, with_params
from genrec.training.strategy import make_strategy
from genrec.training.tasks import Task, build_task, select_score
from genrec.training.trainer import Trainer


def trial_folder(out: Path, number: int) -> Path:
    return out / "trials" / f"{number:04d}"


def trial_config(base: ExperimentConfig, params: dict, follow: list[str]) -> ExperimentConfig:
    """The trial's experiment: the base config with the sampled values (``follow``: see
    :func:`~genrec.experiments.tune.space.with_params`), never refit (a refit tests its model)."""
    cfg = with_params(base, params, follow)
    cfg.train.refit = False
    return cfg


def validation_only(task: Task) -> Task:
    """``task`` with its test split sealed: evaluating any split but validation raises."""
    evaluate = task.evaluate

    def sealed(model, split: str, device) -> dict:
        if split != "valid":
            raise GenrecError(f"a tuning trial may not evaluate the {split!r} split: only validation is read")
        return evaluate(model, split, device)

    task.evaluate = sealed
    return task


class TrialTrainer(Trainer):
    """A :class:`Trainer` whose ``finish`` validates the best checkpoint and does not test it."""

    def finish(self, pruned_at: int | None = None) -> dict:
        ckpt.load_weights(self.out / "best", self.model)
        valid = self.evaluate("valid")
        result = {
            "protocol": {
                **valid["protocol"],
                "selection": f"best validation {self.cfg.eval.select_metric} over epochs",
                "test_split": "not evaluated: a genrec tune trial reads validation only",
                "model": self.cfg.model.name,
                **self.task.describe(),
            },
            "best_epoch": self.state["best_epoch"],
            "epochs_run": self.state["epoch"],
            "train_seconds": round(self.state.get("train_seconds", 0.0), 2),
            "valid": valid["metrics"],
        }
        if pruned_at is not None:
            result["pruned_at_epoch"] = pruned_at
        jsonio.write_json(self.out / "metrics.json", result)
        return result


class Objective:
    """What Optuna calls for each trial: sample, train in ``OUT/trials/NNNN``, return the best
    validation score. The data is prepared once per process and shared by its trials."""

    def __init__(self, base: ExperimentConfig, space: Space, out: Path, data: SequenceData, follow: list[str]):
        self.base, self.space, self.out, self.data, self.follow = base, space, out, data, follow

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", _worker())  # first: a trial killed before its folder exists is found by it
        folder = trial_folder(self.out, trial.number)
        resumes = trial.user_attrs.get("resumes")
        resume = resumes is not None and trial_folder(self.out, resumes).is_dir()
        trial.set_user_attr("folder", str(folder))
        try:
            cfg = trial_config(self.base, self.space.suggest(trial), self.follow)  # a bad combination fails here, before any folder
            if resume:
                os.rename(trial_folder(self.out, resumes), folder)
            with claim(folder, resume=resume):
                return self._run(trial, cfg, folder, resume)
        except GenrecError as exc:  # a diverged run, a bad combination of values: the trial fails, the study goes on
            trial.set_user_attr("error", str(exc))
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # Optuna records it as failed; the next run resumes it
            raise

    def _run(self, trial: optuna.Trial, cfg: ExperimentConfig, folder: Path, resume: bool) -> float:
        metric = cfg.eval.select_metric

        def report(epoch: int, record: dict) -> None:
            if "valid" not in record:
                return
            trial.report(select_score(record["valid"], metric), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        if resume:  # the pruner sees the epochs validated before the interruption
            for record in _log(folder):
                if "valid" in record:
                    trial.report(select_score(record["valid"], metric), record["epoch"])
        strategy = make_strategy(cfg.train)
        clean = False  # an error on this rank: no barrier at teardown (see distributed.teardown)
        try:
            trainer = TrialTrainer(cfg, folder, validation_only(build_task(cfg, self.data)), strategy, on_epoch=report)
            try:
                result = trainer.fit(resume=resume)
            except optuna.TrialPruned:
                trainer.finish(pruned_at=trainer.state["epoch"])
                raise
            clean = True
        finally:
            strategy.teardown(clean)
        trial.set_user_attr("best_epoch", result["best_epoch"])
        trial.set_user_attr("epochs_run", result["epochs_run"])
        return select_score(result["valid"], metric)


def _log(folder: Path) -> list[dict]:
    path = folder / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def recover_interrupted(study: optuna.Study, storage: optuna.storages.BaseStorage, out: Path) -> None:
    """Continue the trials an earlier process left unfinished: a trial still RUNNING whose folder
    in ``out`` no live process holds (killed), or whose worker on this machine is gone (killed
    before its folder existed), or one recorded as failed with ``interrupted`` (Ctrl-C). Each is
    marked failed and its parameters are enqueued as a new trial that resumes its folder. Trials
    of other folders (other machines) are left to them. Call it while no other process of this
    folder does (``tune`` holds the folder's lock)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    running = optuna.trial.TrialState.RUNNING
    for t in study.get_trials(deepcopy=False):
        if t.state != running and not t.user_attrs.get("interrupted"):
            continue
        folder = trial_folder(out, t.number)
        if folder.is_dir():
            guard = claim(folder, resume=True)  # raises when a live process holds the folder
        elif t.state == running and _gone(t.user_attrs.get("worker", "")):
            guard = contextlib.nullcontext()
        else:
            continue
        try:
            with guard:
                if any(u.user_attrs.get("resumes") == t.number for u in study.get_trials(deepcopy=False)):
                    continue  # already taken over
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
                if t.state == running:
                    storage.set_trial_user_attr(trial_id, "interrupted", True)
                    storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
                study.enqueue_trial(t.params, user_attrs={"resumes": t.number})
                print(f"tune: trial {t.number} was interrupted; a new trial continues it"
                      f"{' from its last epoch' if folder.is_dir() else ''}", file=sys.stderr)
        except (GenrecError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # a live process holds it, or another process recovered it first


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _gone(worker: str) -> bool:
    """Whether ``host:pid`` names a process of this machine that no longer runs."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False
