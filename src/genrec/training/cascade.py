"""The classic two-stage baseline: a retrieval model's top-K reranked by a separate ranking model.

``task.kind: cascade`` names two experiment configs (paths relative to the cascade config). Each
stage keeps its ``model`` and ``task`` (and its validation metric) and is trained with the cascade
config's ``data``, ``eval`` and ``train`` sections (same split, holdout and budget), into
``OUT/retrieval`` and ``OUT/ranking``; then the cascade is evaluated:

- retrieval metrics of the cascade: each user's list is the retrieval model's top-K (history
  excluded) reordered by the ranker's probability of the first binary task, followed by the rest
  of the catalogue in retrieval order; the target's rank is read from that list;
- ranking metrics are the ranking stage's own (the cascade scores impressions with it);
- train time is the sum of both stages.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import torch

from genrec.config import ExperimentConfig, load_config
from genrec.data.batches import EvalBatch, eval_batches
from genrec.errors import ConfigError
from genrec.evaluation.evaluator import target_ranks
from genrec.evaluation.metrics import metrics_from_ranks


def stage_configs(cfg: ExperimentConfig, config_dir: Path) -> tuple[ExperimentConfig, ExperimentConfig]:
    """The two stages' configs with the cascade's data, eval and train sections."""
    stages = []
    for rel, kind in ((cfg.task.retrieval_config, "retrieval"), (cfg.task.ranking_config, "ranking")):
        sub = load_config(config_dir / rel)
        if sub.task.kind != kind:
            raise ConfigError(f"cascade: {rel} has task.kind={sub.task.kind}, expected {kind}")
        own_metric = sub.eval.select_metric  # each stage keeps its own selection metric
        sub.data, sub.eval, sub.train = copy.deepcopy(cfg.data), copy.deepcopy(cfg.eval), copy.deepcopy(cfg.train)
        sub.eval.select_metric = own_metric
        if kind == "ranking":
            sub.task.labels, sub.task.positive_rating = cfg.task.labels, cfg.task.positive_rating
            sub.task.binary_actions, sub.task.regression_actions = list(cfg.task.binary_actions), list(cfg.task.regression_actions)
        stages.append(sub)
    return stages[0], stages[1]


@torch.no_grad()
def cascade_ranks(retriever, ranker, data, labels, split: str, eval_cfg, k: int, task_index: int, device="cpu") -> torch.Tensor:
    """[users] rank of each target in the reranked list (see the module docstring)."""
    if retriever.max_history != ranker.max_history:
        raise ConfigError(f"cascade: the stages read different history lengths ({retriever.max_history} vs {ranker.max_history}); align model.max_seq_len")
    retriever.eval(), ranker.eval()
    out = []
    for b in eval_batches(data, split, retriever.max_history, eval_cfg.batch_size, eval_cfg.exclude_history, eval_cfg.query_time, eval_cfg.holdout, labels):
        b = EvalBatch(*(None if t is None else t.to(device) for t in vars(b).values()))
        base = target_ranks(retriever, b, eval_cfg.item_chunk_size)  # [B]
        user = retriever.user_vectors(b.items, b.timestamps, b.query_time)
        _, cand = retriever.topk(user, k, b.exclude)  # [B K]
        probs = torch.sigmoid(ranker.rank(b.items, b.labels, cand, b.timestamps, b.query_time)[..., task_index].float())
        order = probs.argsort(dim=1, descending=True, stable=True)
        reranked = cand.gather(1, order)  # [B K]
        hit = reranked == b.targets.unsqueeze(1)
        pos = torch.where(hit.any(1), hit.float().argmax(1).double(), base.to(torch.double))
        pos[torch.isinf(base)] = math.inf  # excluded targets stay misses
        out.append(pos.cpu())
    return torch.cat(out)


def train_cascade(cfg: ExperimentConfig, out_dir: str | Path, config_dir: Path, resume: bool = False) -> dict:
    from genrec.training.trainer import Trainer, write_json_atomic

    out = Path(out_dir)
    retr_cfg, rank_cfg = stage_configs(cfg, config_dir)
    start = time.perf_counter()
    retr = Trainer(retr_cfg, out / "retrieval")
    retr_result = retr.fit(resume=resume and (out / "retrieval" / "last").exists())
    rank = Trainer(rank_cfg, out / "ranking", data=retr.data)
    rank_result = rank.fit(resume=resume and (out / "ranking" / "last").exists())
    train_seconds = time.perf_counter() - start
    task_index = rank.task.enhancer_index
    result = {
        "protocol": {
            **retr_result["protocol"], **{k: v for k, v in rank_result["protocol"].items() if k.startswith("ranking")},
            "task": "cascade",
            "cascade": f"retrieval top-{cfg.task.cascade_k} (history excluded) reordered by the ranker's "
                       f"{rank.task.spec.names[task_index]} probability; the rest keeps retrieval order",
            "stages": {"retrieval": str(out / "retrieval"), "ranking": str(out / "ranking")},
            "selection": "each stage selected on its own validation metric (retrieval: "
                         f"{retr_cfg.eval.select_metric}, ranking: {rank_cfg.eval.select_metric}); test never used",
        },
        "best_epoch": {"retrieval": retr_result["best_epoch"], "ranking": rank_result["best_epoch"]},
        "train_seconds": train_seconds,
    }
    for split in ("valid", "test"):
        ranks = cascade_ranks(retr.model, rank.model, retr.data, rank.task.labels, split, cfg.eval, cfg.task.cascade_k, task_index, retr.device)
        metrics = metrics_from_ranks(ranks, cfg.eval.ks)
        metrics["targets_in_excluded_history"] = int(torch.isinf(ranks).sum())
        ranking = {k: v for k, v in rank_result[split].items() if k in ("auc", "gauc", "logloss", "list_ndcg@10", "tasks")}
        result[split] = {**metrics, **ranking}
        result[f"{split}_retrieval_stage_alone"] = retr_result[split]
    write_json_atomic(out / "metrics.json", result)
    return result
