"""The training recipe: prepare data, train, select on validation, test the best. What is trained
(retrieval, ranking, unified) comes from ``task.kind`` through :mod:`genrec.training.tasks`.

Run folder layout (a stable contract):

- ``config.yaml``    the resolved experiment config;
- ``log.jsonl``      one JSON line per epoch (loss, throughput, validation metrics);
- ``steps.jsonl``    unified models: one line per step (both losses, the weighter's weights, enhancer stats);
- ``best/``          checkpoint of the best validation epoch (what ``eval``/``recommend`` take);
- ``last/``          checkpoint + optimizer + trainer state after the last finished epoch (resume);
- ``metrics.json``   {"protocol", "best_epoch", "valid", "test"} (+ "test_refit" with ``train.refit``);
- ``refit/``         with ``train.refit``: the model retrained on training + validation items.

Reproducibility: the global RNG is re-seeded from (seed, epoch) at the start of every epoch and
batches come from (seed, epoch) too, so a run resumed from ``last/`` retraces the uninterrupted one.

Under ``torchrun`` the same recipe runs data-parallel (:mod:`genrec.training.distributed`): every
rank trains on its share of each global batch, rank 0 alone evaluates and writes the run folder.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from genrec.config import ExperimentConfig
from genrec import jsonio
from genrec.errors import ConfigError, TrainingDiverged
from genrec.data.prepare import SequenceData, load_prepared, prepare
from genrec import checkpoint as ckpt
from genrec.training import distributed
from genrec.training import sharded_table
from genrec.training.tasks import build_task, select_score


TABLE_OPTIMIZER = "table_optimizer.safetensors"
"""In ``last/`` of a run with a sharded item table: the table optimizer's per-row state."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fit_model_config(cfg: ExperimentConfig, data: SequenceData) -> list[str]:
    """Fill data-dependent model fields; return protocol notes about what was changed and why."""
    notes = []
    cfg.model.num_items = data.num_items
    if getattr(cfg.model, "time_bias", False) and data.timestamps is None:
        cfg.model.time_bias = False
        notes.append("time bias off: the dataset has no timestamps (position bias only)")
    return notes


class Trainer:
    def __init__(self, cfg: ExperimentConfig, out_dir: str | Path, data: SequenceData | None = None, include_valid: bool = False):
        self.cfg, self.out = cfg, Path(out_dir)
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        rowwise = cfg.train.item_table == "rowwise"
        if rowwise and (cfg.task.kind != "retrieval" or cfg.train.refit):
            raise ConfigError("train.item_table=rowwise is for retrieval training without train.refit")
        self.dist, self.device = distributed.setup(resolve_device(cfg.train.device), need_group=rowwise)
        if self.dist.enabled and (cfg.train.refit or cfg.task.kind == "cascade"):
            raise ConfigError("train.refit and cascades run in one process; launch them without torchrun")
        self.data = data if data is not None else load_prepared(prepare(cfg.data))
        self.notes = fit_model_config(cfg, self.data)
        self.task = build_task(cfg, self.data)
        torch.manual_seed(cfg.train.seed)
        self.model = self.task.build_model().to(self.device)
        self.table = None  # the row-wise sharded item table (train.item_table=rowwise)
        if rowwise:
            self.table = sharded_table.install(self.model)
        t = cfg.train
        if t.compile:
            compile_backbone(self.model)
        # forward(batch, epoch) -> (loss, logs)
        self.step = distributed.wrap(self.model, self.task, self.dist, self.device, self.table, t)
        dense = [p for n, p in self.model.named_parameters() if self.table is None or not n.startswith("item_embedding.")]
        self.optimizer = torch.optim.AdamW(dense, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
        self._table_state: dict[str, torch.Tensor] = {}  # rank 0: the gathered table + its optimizer state
        self.batches = self.task.batches(include_valid)
        self.state = {"epoch": 0, "best_epoch": None, "best_score": float("-inf"), "bad_evals": 0, "stopped_early": False}

    # ---- checkpoints ------------------------------------------------------------------------
    def _save(self, name: str, with_state: bool) -> None:
        if not self.dist.is_main:
            return
        weights, table_optimizer = None, None
        if self.table is not None:  # gathered on entering _assembled()
            weights, table_optimizer = sharded_table.checkpoint_state(self.model, self._table_state)

        def fill(folder: Path) -> None:
            ckpt.fill_model(folder, self.model, list(self.data.item_ids), self.cfg.to_dict(), weights)
            if with_state:
                ckpt.fill_optimizer(folder, self.optimizer)
                if table_optimizer is not None:
                    ckpt.save_tensors(folder / TABLE_OPTIMIZER, table_optimizer)
                (folder / "state.json").write_text(jsonio.dumps(self.state))

        ckpt.write_atomic_dir(self.out / name, fill)

    def _resume(self) -> None:
        folder = ckpt.resolve(self.out / "last")
        if self.table is None:
            ckpt.load_weights(folder, self.model)
        else:  # every rank reads the whole table and keeps its rows
            weights = ckpt.load_tensors(folder / "model.safetensors")
            sharded_table.restore(self.model, weights, ckpt.load_tensors(folder / TABLE_OPTIMIZER), self.step.fused_optimizer)
        ckpt.load_optimizer(folder, self.optimizer)
        self.state = json.loads((folder / "state.json").read_text())
        if self.state.get("best_score") is None:  # -inf (nothing validated yet) is written as null
            self.state["best_score"] = float("-inf")

    @contextlib.contextmanager
    def _assembled(self):
        """Sharded table: gather it (and its optimizer state) on rank 0 for evaluation and
        checkpoints, then go back to sharded lookups. A no-op otherwise. Every rank enters."""
        if self.table is None:
            yield
            return
        self._table_state = self.table.gather(self.dist.rank, self.step.fused_optimizer)
        try:
            yield
        finally:
            self.table.release()
            self._table_state = {}

    # ---- loop -------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> dict:
        t = self.cfg.train
        env = self.dist
        torch.manual_seed(t.seed * 100_003 + epoch + 7919 * env.rank)  # dropout + negatives, reproducible on resume
        self.model.train()
        total, steps, skipped, start = 0.0, 0, 0, time.perf_counter()
        step_logs: list[dict] = []
        batches = self.batches.epoch(t.seed, epoch, (env.rank, env.world_size))
        bar = tqdm(batches, total=len(self.batches), desc=f"epoch {epoch + 1}", leave=False, dynamic_ncols=True, disable=None if env.is_main else True)
        for batch in bar:
            batch = batch.to(self.device)
            with autocast(self.device, t.precision):
                loss, logs = self.step(batch, epoch)
            if logs:
                step_logs.append({"epoch": epoch + 1, "step": steps + 1, **logs})
            value = loss.item()
            if env.enabled:  # weight by this rank's share of the batch's targets: DDP's gradient mean = global mean loss
                n = batch.num_targets
                n_all, loss_sum = distributed.all_sum([n, value * n], env, self.device)
                loss, value = loss * (n * env.world_size / n_all), loss_sum / n_all
            if not math.isfinite(value):  # every rank sees the same global value, so all take the same branch
                if t.nonfinite_loss == "stop":
                    raise TrainingDiverged(
                        f"epoch {epoch + 1}, step {steps + skipped + 1}: the training loss is {value}; the run stops "
                        "(last/ holds the previous epoch). Lower train.lr, set train.grad_clip, or set "
                        "train.nonfinite_loss=skip to skip such steps")
                skipped += 1
                self.optimizer.zero_grad(set_to_none=True)
                continue
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            self.optimizer.step()
            total, steps = total + value, steps + 1
            bar.set_postfix(loss=f"{total / steps:.4f}")
        seconds = time.perf_counter() - start
        record = {"epoch": epoch + 1, "loss": total / max(steps, 1), "seconds": seconds, "tokens_per_s": self.batches.num_tokens / seconds}
        if skipped:
            record["skipped_nonfinite_steps"] = skipped
        for key in sorted({k for log in step_logs for k in log} - {"epoch", "step"}):
            vals = [log[key] for log in step_logs if key in log]
            record[key] = sum(vals) / len(vals) if key != "enhancer_seconds" else sum(vals)
        if step_logs and env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            jsonio.append_lines(self.out / "steps.jsonl", step_logs)
        return record

    def _evaluate(self, split: str) -> dict:
        with torch.no_grad():
            return self.task.evaluate(self.model, split, self.device)

    def fit(self, resume: bool = False) -> dict:
        """Train (or resume), select on validation, test the best checkpoint; write metrics.json."""
        main = self.dist.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        if resume:
            self._resume()
        t, metric = self.cfg.train, self.cfg.eval.select_metric
        peak_rss = 0
        while self.state["epoch"] < t.epochs and not self.state["stopped_early"]:
            epoch = self.state["epoch"]
            record = self._train_epoch(epoch)
            self.state["epoch"] = epoch + 1
            self.state["train_seconds"] = self.state.get("train_seconds", 0.0) + record["seconds"]
            with self._assembled():
                if (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs:
                    if main:
                        self._validate(epoch, record)
                    self.state = distributed.broadcast(self.state, self.dist)  # ranks follow rank 0's early stopping
                peak_rss = max(peak_rss, _peak_rss_mb())
                record["peak_rss_mb"] = peak_rss
                self._save("last", with_state=True)
            if main:
                jsonio.append_lines(self.out / "log.jsonl", [record])
                tqdm.write(_summary(record, metric), file=sys.stderr)
        if self.table is not None:
            sharded_table.unshard(self.model, self.dist.rank, self.step.fused_optimizer)
            self.table = None
        result = self.finish() if main else None
        return distributed.broadcast(result, self.dist)

    def _validate(self, epoch: int, record: dict) -> None:
        """Validation metrics into ``record``; keep the best checkpoint; count toward early stopping."""
        t = self.cfg.train
        start = time.perf_counter()
        valid = self._evaluate("valid")["metrics"]
        record["valid"], record["eval_seconds"] = valid, time.perf_counter() - start
        score = select_score(valid, self.cfg.eval.select_metric)
        if score > self.state["best_score"]:
            self.state.update(best_score=score, best_epoch=epoch + 1, bad_evals=0)
            self._save("best", with_state=False)
        else:
            self.state["bad_evals"] += 1
            if t.patience and self.state["bad_evals"] >= t.patience:
                self.state["stopped_early"] = True

    def finish(self) -> dict:
        ckpt.load_weights(self.out / "best", self.model)
        valid, test = self._evaluate("valid"), self._evaluate("test")
        result = {
            "protocol": {
                **test["protocol"],
                "selection": f"best validation {self.cfg.eval.select_metric} over epochs (test never used for selection)",
                "model": self.cfg.model.name,
                **self.task.describe(),
                "loss": _loss_desc(self.cfg),
                "precision": self.cfg.train.precision,
                "notes": self.notes,
            },
            "best_epoch": self.state["best_epoch"],
            "epochs_run": self.state["epoch"],
            "train_seconds": round(self.state.get("train_seconds", 0.0), 2),
            "valid": valid["metrics"],
            "test": test["metrics"],
        }
        if self.cfg.train.refit:
            self.add_refit(result)
        write_json_atomic(self.out / "metrics.json", result)
        return result

    def add_refit(self, result: dict) -> dict:
        """Add ``test_refit`` and its protocol line to a metrics.json dict (refit for its best epoch)."""
        epochs = result["best_epoch"]
        result["test_refit"] = self.refit(epochs)
        result["protocol"]["refit"] = (
            f"test_refit: a fresh model trained on training + validation items for the selected "
            f"{epochs} epochs (same seed), then tested once"
        )
        return result

    def refit(self, epochs: int) -> dict:
        """Retrain from scratch on training + validation items for ``epochs``; test metrics.
        Deterministic, so an interrupted refit simply runs again to the same result."""
        sub = Trainer(self.cfg, self.out / "refit", data=self.data, include_valid=True)
        for epoch in range(epochs):
            tqdm.write(_summary(sub._train_epoch(epoch), ""), file=sys.stderr)
        sub._save("model", with_state=False)
        return sub._evaluate("test")["metrics"]


def compile_backbone(model: torch.nn.Module) -> None:
    """Route the backbone's ``transduce`` through ``torch.compile`` (dynamic shapes: batches vary
    in length). Compilation happens at the first call; if it fails (no C++ compiler, an op the
    compiler does not support), say so once and run eager from then on."""
    backbone = getattr(model, "backbone", model)
    eager = backbone.transduce
    current = {"fn": torch.compile(eager, dynamic=True)}

    def transduce(*args, **kwargs):
        if current["fn"] is eager:
            return eager(*args, **kwargs)
        try:
            return current["fn"](*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any compiler failure falls back; eager re-raises real errors
            print(f"genrec: torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); running eager", file=sys.stderr)
            current["fn"] = eager
            return eager(*args, **kwargs)

    backbone.transduce = transduce


def _loss_desc(cfg) -> str:
    t, kind = cfg.train, cfg.task.kind
    if kind == "ranking":
        return "ranking: BCE per binary task, MSE per regression task, summed"
    if kind == "unified":
        return (f"unified: retrieval sampled softmax ({t.num_negatives} uniform negatives per {t.negative_sharing}, "
                f"temperature {t.temperature}) + ranking BCE/MSE, combined by the {cfg.task.weighter} weighter")
    if t.loss == "sampled_softmax":
        return f"sampled softmax, {t.num_negatives} uniform negatives per {t.negative_sharing}, temperature {t.temperature}"
    return f"{t.loss.replace('_', ' ')}, temperature {t.temperature}"


def _summary(record: dict, metric: str) -> str:
    text = f"epoch {record['epoch']}: loss {record['loss']:.4f}, {record['seconds']:.1f}s, {record['tokens_per_s']:.0f} tok/s"
    if "valid" in record:
        shown = [m.strip() for m in metric.split("+")]
        text += ", valid " + ", ".join(f"{m} {record['valid'][m]:.4f}" for m in shown)
    return text


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


write_json_atomic = jsonio.write_json


def train(cfg: ExperimentConfig, out_dir: str | Path, resume: bool = False, config_dir: str | Path = ".") -> dict:
    """Train an experiment into ``out_dir``; returns the metrics.json content. ``cfg`` is not
    modified (data-dependent fields are filled in a copy). A cascade trains its two stages;
    their config paths are relative to ``config_dir``."""
    if cfg.task.kind == "cascade":
        from genrec.training.cascade import train_cascade

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return train_cascade(copy.deepcopy(cfg), out_dir, Path(config_dir), resume)
    trainer = Trainer(copy.deepcopy(cfg), out_dir)
    try:
        return trainer.fit(resume=resume)
    finally:
        distributed.teardown(trainer.dist)
