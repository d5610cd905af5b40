"""The classic two-stage baseline: a retrieval model's top-K reranked by a separate ranking model.

``task.kind: cascade`` names two experiment configs (paths relative to the cascade config). Each
stage keeps its ``model`` and ``task`` (and its validation metric) and is trained with the cascade
config's ``data``, ``eval`` and ``train`` sections (same split, holdout and budget), into
``OUT/retrieval`` and ``OUT/ranking``; then the cascade is evaluated
(:mod:`genrec.evaluation.cascade`):

- retrieval metrics of the cascade: each user's list is the retrieval model's top-K (history
  excluded) reordered by the ranker's probability of the first binary task, followed by the rest
  of the catalogue in retrieval order; the target's rank is read from that list;
- ranking metrics are the ranking stage's own (the cascade scores impressions with it);
- train time is the sum of both stages.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from genrec import jsonio
from genrec.config import ExperimentConfig, load_config
from genrec.data.prepare import load_prepared, prepare
from genrec.errors import ConfigError
from genrec.evaluation.cascade import cascade_ranks
from genrec.evaluation.metrics import metrics_from_ranks
from genrec.training.strategy import make_strategy
from genrec.training.tasks import build_task
from genrec.training.trainer import Trainer


EXCLUDED = {"full": "the user's earlier items excluded", "input": "the model input's items excluded", "none": "nothing excluded"}


def stage_configs(cfg: ExperimentConfig) -> tuple[ExperimentConfig, ExperimentConfig]:
    """The two stages' configs with the cascade's data, eval and train sections."""
    stages = []
    for path, kind in ((cfg.task.retrieval_config, "retrieval"), (cfg.task.ranking_config, "ranking")):
        sub = load_config(path)
        if sub.task.kind != kind:
            raise ConfigError(f"cascade: {path} has task.kind={sub.task.kind}, expected {kind}")
        own_metric = sub.eval.select_metric  # each stage keeps its own selection metric
        sub.data, sub.eval, sub.train = copy.deepcopy(cfg.data), copy.deepcopy(cfg.eval), copy.deepcopy(cfg.train)
        sub.eval.select_metric = own_metric
        if kind == "ranking":
            sub.task.labels, sub.task.positive_rating = cfg.task.labels, cfg.task.positive_rating
            sub.task.binary_actions, sub.task.regression_actions = list(cfg.task.binary_actions), list(cfg.task.regression_actions)
        stages.append(sub)
    return stages[0], stages[1]


def train_cascade(cfg: ExperimentConfig, out_dir: str | Path, resume: bool = False) -> dict:
    out = Path(out_dir)
    retr_cfg, rank_cfg = stage_configs(cfg)
    strategy = make_strategy(cfg.train)
    if strategy.env.enabled:
        raise ConfigError("train.refit and cascades run in one process; launch them without torchrun")
    data = load_prepared(prepare(cfg.data))
    retr = Trainer(retr_cfg, out / "retrieval", build_task(retr_cfg, data), strategy)
    retr_result = retr.fit(resume=resume and (out / "retrieval" / "last").exists())
    rank = Trainer(rank_cfg, out / "ranking", build_task(rank_cfg, data), strategy)
    rank_result = rank.fit(resume=resume and (out / "ranking" / "last").exists())
    train_seconds = retr_result["train_seconds"] + rank_result["train_seconds"]  # training only, both stages
    names, chosen = rank.task.label_spec.names, rank_cfg.task.enhancer_task  # the binary task whose probability reorders
    task_index = names.index(chosen) if chosen else (rank.task.label_spec.binary[0] if rank.task.label_spec.binary else 0)
    result = {
        "protocol": {
            **retr_result["protocol"], **{k: v for k, v in rank_result["protocol"].items() if k.startswith("ranking")},
            "task": "cascade",
            "cascade": f"retrieval top-{cfg.task.cascade_k} ({EXCLUDED[cfg.eval.exclude_history]}) reordered by the ranker's "
                       f"{names[task_index]} probability; the rest keeps retrieval order",
            "stages": {"retrieval": str(out / "retrieval"), "ranking": str(out / "ranking")},
            "selection": "each stage selected on its own validation metric (retrieval: "
                         f"{retr_cfg.eval.select_metric}, ranking: {rank_cfg.eval.select_metric}); test never used",
        },
        "best_epoch": {"retrieval": retr_result["best_epoch"], "ranking": rank_result["best_epoch"]},
        "train_seconds": train_seconds,
    }
    for split in ("valid", "test"):
        ranks = cascade_ranks(retr.model, rank.model, data, rank.task.labels, split, cfg.eval, cfg.task.cascade_k, task_index, strategy.device)
        metrics = metrics_from_ranks(ranks, cfg.eval.ks)
        metrics["targets_in_excluded_history"] = int(torch.isinf(ranks).sum())
        ranking = {k: v for k, v in rank_result[split].items() if k in ("auc", "gauc", "logloss", "list_ndcg@10", "tasks")}
        result[split] = {**metrics, **ranking}
        result[f"{split}_retrieval_stage_alone"] = retr_result[split]
    jsonio.write_json(out / "metrics.json", result)
    return result
