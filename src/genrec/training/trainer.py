"""The training core: one task on one model under one execution strategy. Trains, validates
every ``eval_every`` epochs, keeps the best checkpoint, tests it. Runs that train several models
(refit, cascades, sweeps) live one layer up, in :mod:`genrec.experiments`.

Run folder layout (a stable contract):

- ``config.yaml``    the experiment config as given (data-decided model fields are in ``best/model.json``);
- ``log.jsonl``      one JSON line per epoch (loss, throughput, validation metrics; ``lr``, the last step's
                     learning rate, under a schedule);
- ``curves.png``     training loss and validation metrics per epoch, redrawn after every epoch (needs matplotlib);
- ``steps.jsonl``    unified models: one line per step (both losses, the weighter's weights, enhancer stats);
- ``weights.png``    unified models: the weighter's weights and each task's loss (or gradient norm) per step;
- ``best/``          checkpoint of the best validation epoch (what ``eval``/``recommend`` take);
- ``last/``          checkpoint + optimizer + trainer state after the last finished epoch (resume);
- ``metrics.json``   {"protocol", "best_epoch", "valid", "test"} (+ "test_refit" with ``train.refit``).

Reproducibility: the global RNG is re-seeded from (seed, epoch) at the start of every epoch and
batches come from (seed, epoch) too, so a run resumed from ``last/`` retraces the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from genrec import checkpoint as ckpt
from genrec import jsonio
from genrec.config import ExperimentConfig
from genrec.data.item_metadata import run_metadata
from genrec.errors import CheckpointError, ConfigError, TrainingDiverged
from genrec.training import curves
from genrec.training.precision import describe as describe_precision
from genrec.training.precision import resolve_precision
from genrec.training.schedule import lr_factor
from genrec.training.strategy import SingleProcess
from genrec.training.tasks import Task, select_score


def _schedule(t) -> dict | None:
    """What fixes a run's learning rate at every step (None: constant, no warm-up; then
    ``train.epochs`` may change on resume, as ``genrec train --resume ... train.epochs=N`` allows)."""
    if t.lr_schedule == "constant" and not t.warmup_epochs:
        return None
    return {"lr_schedule": t.lr_schedule, "warmup_epochs": t.warmup_epochs, "epochs": t.epochs if t.lr_schedule != "constant" else None}


def _describe_schedule(schedule: dict | None) -> str:
    if schedule is None:
        return "constant, no warm-up"
    horizon = f" to 0 at epoch {schedule['epochs']}" if schedule["epochs"] is not None else ""
    return f"{schedule['lr_schedule']}{horizon}, warm-up {schedule['warmup_epochs']} epochs"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when ``train.precision`` resolves to bf16 on ``device`` (see :mod:`.precision`)."""
    if resolve_precision(precision, device)[0] == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(step_module, optimizer: torch.optim.Optimizer, batch, epoch: int, train_cfg,
               strategy: SingleProcess, clip_parameters: list | None = None) -> tuple[float, dict]:
    """One optimisation step on a batch already on the device: forward under the configured
    precision, the loss weighted for data-parallel ranks, backward, gradient clipping, update.
    Returns (the global batch's mean loss, the task's per-step logs). A non-finite loss makes no
    update (the caller decides whether the run stops: ``train.nonfinite_loss``).
    ``clip_parameters``: what ``train.grad_clip`` clips (default: the step module's parameters)."""
    with autocast(strategy.device, train_cfg.precision):  # "auto": the cached decision the protocol reports
        loss, logs = step_module(batch, epoch)
    loss, value = strategy.global_loss(loss, loss.item(), batch.num_targets)
    optimizer.zero_grad(set_to_none=True)
    if not math.isfinite(value):  # every rank sees the same global value, so all take this branch
        return value, logs
    loss.backward()
    if train_cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(clip_parameters or list(step_module.parameters()), train_cfg.grad_clip)
    optimizer.step()
    return value, logs


def compile_model(model) -> None:
    """Route the model's backbone through ``torch.compile`` (dynamic shapes: batches vary in
    length). Compilation happens at the first call; if it fails (no C++ compiler, an op the
    compiler does not support), say so once and run eager from then on."""

    def with_fallback(eager):
        current = {"fn": torch.compile(eager, dynamic=True)}

        def run(*args, **kwargs):
            if current["fn"] is eager:
                return eager(*args, **kwargs)
            try:
                return current["fn"](*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any compiler failure falls back; eager re-raises real errors
                print(f"genrec: torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); running eager", file=sys.stderr)
                current["fn"] = eager
                return eager(*args, **kwargs)

        return run

    if not model.compile_backbone(with_fallback):
        raise ConfigError("train.compile: this model has no sequence backbone to compile")


class Trainer:
    def __init__(self, cfg: ExperimentConfig, out_dir: str | Path, task: Task, strategy: SingleProcess | None = None,
                 include_valid: bool = False, on_epoch: Callable[[int, dict], None] | None = None):
        """``on_epoch(epoch, record)``: called on the main process after each epoch's record (with
        ``valid`` when it validated) is in log.jsonl; an exception from it stops the run, with
        ``last/`` at that epoch (``genrec tune`` prunes trials this way)."""
        self.cfg, self.out, self.task, self.on_epoch = cfg, Path(out_dir), task, on_epoch
        self.strategy = strategy or SingleProcess(torch.device("cpu"))
        t = cfg.train
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        torch.manual_seed(t.seed)
        self.model = task.build_model().to(self.strategy.device)
        self.strategy.prepare(self.model)
        if t.compile:
            compile_model(self.model)
        self.step_module = self.strategy.wrap(self.model, task, t)  # forward(batch, epoch) -> (loss, logs)
        self.clip_parameters = list(self.model.parameters())
        dense = self.strategy.dense_parameters(self.model)
        self.optimizer = torch.optim.AdamW(dense, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay) if dense else None
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups] if self.optimizer else []  # scaled per step by a schedule
        self.batches = task.batches(include_valid)
        # titles and fields of the catalogue's items (data.item_metadata), stored with every checkpoint
        # for genrec serve; read here, so a wrong file fails before the first epoch
        self.item_metadata = run_metadata(cfg.data, task.data.item_ids)
        self.state = {"epoch": 0, "best_epoch": None, "best_score": float("-inf"), "bad_evals": 0, "stopped_early": False,
                      "schedule": _schedule(t)}

    @property
    def is_main(self) -> bool:
        return self.strategy.is_main


    # ---- checkpoints ------------------------------------------------------------------------
    def save(self, name: str, with_state: bool) -> None:
        """Write ``out/name`` (atomically; main process only)."""
        if not self.is_main:
            return
        weights, extra = self.strategy.checkpoint_weights(self.model)

        def fill(folder: Path) -> None:
            ckpt.fill_model(folder, self.model, list(self.task.data.item_ids), self.cfg.to_dict(), weights, self.item_metadata)
            if with_state:
                ckpt.fill_optimizer(folder, self.optimizer)
                for file, tensors in extra.items():
                    ckpt.save_tensors(folder / file, tensors)
                (folder / "state.json").write_text(jsonio.dumps({**self.state, "task": self.task.state_dict()}))

        ckpt.write_atomic_dir(self.out / name, fill)

    def _resume(self) -> None:
        folder = ckpt.resolve(self.out / "last")
        self.strategy.restore(folder, self.model)
        ckpt.load_optimizer(folder, self.optimizer)
        state = json.loads((folder / "state.json").read_text())
        held, asked = state.get("schedule"), _schedule(self.cfg.train)
        if held is not None and held != asked:  # (checkpoints from before schedules hold none: constant)
            raise ConfigError(f"{self.out}: resuming with another learning-rate schedule ({_describe_schedule(asked)}) than the "
                              f"run's ({_describe_schedule(held)}): its rates would jump at the resumed step. Resume with the "
                              "run's settings (a cosine's horizon is train.epochs), or start a new run")
        self.state = {**state, "schedule": asked}
        self.task.load_state_dict(self.state.pop("task", None) or {})
        if self.state.get("best_score") is None:  # -inf (nothing validated yet) is written as null
            self.state["best_score"] = float("-inf")

    def _has_checkpoint(self) -> bool:
        try:
            ckpt.resolve(self.out / "last")
        except CheckpointError:
            return False
        return True

    def _clear_partial(self) -> None:
        """Remove what an epoch that never finished left (its step log, a best/ of no saved epoch)."""
        for name in ("log.jsonl", "steps.jsonl", "curves.png", "weights.png", "metrics.json"):
            (self.out / name).unlink(missing_ok=True)
        for name in ("best", "best.old"):
            if (self.out / name).is_dir():
                shutil.rmtree(self.out / name)

    # ---- loop -------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict:
        t, env = self.cfg.train, self.strategy.env
        torch.manual_seed(t.seed * 100_003 + epoch + 7919 * env.rank)  # dropout + negatives, reproducible on resume
        self.model.train()
        total, steps, skipped, start = 0.0, 0, 0, time.perf_counter()
        scheduled = self.optimizer is not None and _schedule(t) is not None
        per_epoch = len(self.batches)
        step_logs: list[dict] = []
        batches = self.batches.epoch(t.seed, epoch, (env.rank, env.world_size))
        bar = tqdm(batches, total=per_epoch, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False, dynamic_ncols=True,
                   disable=None if self.is_main else True)
        for i, batch in enumerate(bar):
            if scheduled:
                factor = lr_factor(epoch * per_epoch + i, per_epoch, t.epochs, t.lr_schedule, t.warmup_epochs)
                for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                    group["lr"] = base * factor
            value, logs = train_step(self.step_module, self.optimizer, batch.to(self.strategy.device), epoch, t, self.strategy,
                                     self.clip_parameters)
            if logs:
                step_logs.append({"epoch": epoch + 1, "step": steps + skipped + 1, **logs})
            if not math.isfinite(value):
                if t.nonfinite_loss == "stop":
                    raise TrainingDiverged(
                        f"epoch {epoch + 1}, step {steps + skipped + 1}: the training loss is {value}; the run stops "
                        "(last/ holds the previous epoch). Lower train.lr, set train.grad_clip, or set "
                        "train.nonfinite_loss=skip to skip such steps")
                skipped += 1
                continue
            total, steps = total + value, steps + 1
            bar.set_postfix(loss=f"{total / steps:.4f}")
        seconds = time.perf_counter() - start
        record = {"epoch": epoch + 1, "loss": total / steps if steps else None,  # None: every step was skipped
                  "seconds": seconds, "tokens_per_s": self.batches.num_tokens / seconds}
        if scheduled:
            record["lr"] = self.optimizer.param_groups[0]["lr"]  # the rate of the epoch's last step
        if skipped:
            record["skipped_nonfinite_steps"] = skipped
        for key in sorted({k for log in step_logs for k in log} - {"epoch", "step"}):
            vals = [log[key] for log in step_logs if key in log]
            record[key] = sum(vals) / len(vals) if key != "enhancer_seconds" else sum(vals)
        if step_logs and self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            jsonio.append_lines(self.out / "steps.jsonl", step_logs)
            if "w_retrieval" in step_logs[0]:
                curves.plot_steps(self.out / "steps.jsonl", self.out / "weights.png")
        return record

    def evaluate(self, split: str) -> dict:
        with torch.no_grad():
            return self.task.evaluate(self.model, split, self.strategy.device)

    def fit(self, resume: bool = False) -> dict:
        """Train (or resume), select on validation, test the best checkpoint; write metrics.json."""
        main = self.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        if resume and self._has_checkpoint():
            self._resume()
        elif resume:  # killed before the first epoch finished: nothing to continue
            if main:
                print(f"genrec: {self.out}: no last/ checkpoint yet (the run stopped before its first epoch ended); "
                      "starting from the beginning", file=sys.stderr)
                self._clear_partial()
        if main and self.cfg.train.precision == "auto":
            print(f"precision: {describe_precision('auto', self.strategy.device)}", file=sys.stderr)
        t, metric = self.cfg.train, self.cfg.eval.select_metric
        peak_rss = 0
        epochs = t.epochs
        if not self.task.trainable:  # fit in closed form when built: validate and keep it, no epochs
            if main:
                self._validate(-1, {})
            epochs = 0
        while self.state["epoch"] < epochs and not self.state["stopped_early"]:
            epoch = self.state["epoch"]
            record = self.train_epoch(epoch)
            self.state["epoch"] = epoch + 1
            self.state["train_seconds"] = self.state.get("train_seconds", 0.0) + record["seconds"]
            with self.strategy.assembled():
                if (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs:
                    if main:
                        self._validate(epoch, record)
                    self.state = self.strategy.broadcast(self.state)  # ranks follow rank 0's early stopping
                peak_rss = max(peak_rss, _peak_rss_mb())
                record["peak_rss_mb"] = peak_rss
                self.save("last", with_state=True)
            if main:
                jsonio.append_lines(self.out / "log.jsonl", [record])
                curves.plot(self.out / "log.jsonl", self.out / "curves.png")
                tqdm.write(_summary(record, metric), file=sys.stderr)
                if self.on_epoch:
                    self.on_epoch(epoch + 1, record)
        self.strategy.finish(self.model)
        result = self.finish() if main else None
        return self.strategy.broadcast(result)

    def _validate(self, epoch: int, record: dict) -> None:
        """Validation metrics into ``record``; keep the best checkpoint; count toward early stopping."""
        t = self.cfg.train
        start = time.perf_counter()
        valid = self.evaluate("valid")["metrics"]
        record["valid"], record["eval_seconds"] = valid, time.perf_counter() - start
        score = select_score(valid, self.cfg.eval.select_metric)
        if score > self.state["best_score"]:
            self.state.update(best_score=score, best_epoch=epoch + 1, bad_evals=0)
            self.save("best", with_state=False)
        else:
            self.state["bad_evals"] += 1
            if t.patience and self.state["bad_evals"] >= t.patience:
                self.state["stopped_early"] = True

    def finish(self) -> dict:
        """Test the best checkpoint; write and return metrics.json."""
        ckpt.load_weights(self.out / "best", self.model)
        valid, test = self.evaluate("valid"), self.evaluate("test")
        described = self.task.describe()
        result = {
            "protocol": {
                **test["protocol"],
                "selection": f"best validation {self.cfg.eval.select_metric} over epochs (test never used for selection)",
                "model": self.cfg.model.name,
                **described,
                "precision": describe_precision(self.cfg.train.precision, self.strategy.device),
                "notes": self.task.notes,
            },
            "best_epoch": self.state["best_epoch"],
            "epochs_run": self.state["epoch"],
            "train_seconds": round(self.state.get("train_seconds", 0.0), 2),
            "valid": valid["metrics"],
            "test": test["metrics"],
        }
        jsonio.write_json(self.out / "metrics.json", result)
        return result


def _summary(record: dict, metric: str) -> str:
    loss = "n/a (every step skipped)" if record["loss"] is None else f"{record['loss']:.4f}"
    text = f"epoch {record['epoch']}: loss {loss}, {record['seconds']:.1f}s, {record['tokens_per_s']:.0f} tok/s"
    if "valid" in record:
        shown = [m.strip() for m in metric.split("+")]
        text += ", valid " + ", ".join(f"{m} {record['valid'][m]:.4f}" for m in shown)
    return text


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
