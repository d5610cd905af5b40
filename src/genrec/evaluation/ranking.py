"""Ranking evaluation: every held-out interaction of a user's validation/test block is an
impression, scored by the model's ranking contract (:class:`~genrec.models.contracts.Ranker`)
from the history before the block, with that history's feedback.

Headline metrics are those of the first binary task (``auc``, ``gauc``, ``logloss``,
``list_ndcg@10``); every task's own metrics are under ``tasks``. Non-finite outputs (a corrupted
or diverged model) count as probability 0 and are counted (``nonfinite_outputs``).
"""

from __future__ import annotations

import numpy as np
import torch

from genrec.data.batches import eval_batches
from genrec.data.feedback import LabelSpec, label_stats
from genrec.data.prepare import SequenceData
from genrec.evaluation.evaluator import progress, split_desc
from genrec.evaluation.metrics import auc, gauc, list_ndcg, logloss
from genrec.models.contracts import Ranker

METRICS_DESC = (
    "auc over all impressions (ties 1/2); gauc = per-user AUC weighted by impressions, users with one class "
    "skipped and counted; logloss; list_ndcg = NDCG of each user's held-out block ordered by score (gain = "
    "label, pessimistic ties), users without a positive skipped"
)


def ranking_metrics(users: torch.Tensor, outputs: torch.Tensor, labels: torch.Tensor, spec: LabelSpec) -> dict:
    """users [B, K], outputs/labels [B, K, A] -> headline metrics of the first binary task
    (``auc``, ``gauc``, ``logloss``, ``list_ndcg``) plus every task under ``tasks``."""
    per_task = {}
    for a, (name, kind) in enumerate(zip(spec.names, spec.kinds)):
        out, y = outputs[..., a], labels[..., a]
        bad = ~torch.isfinite(out)
        if kind == "regression":
            per_task[name] = {"mse": float((out - y).pow(2).mean()), "nonfinite_outputs": int(bad.sum())}
            continue
        p = torch.sigmoid(out.masked_fill(bad, float("-inf")))  # non-finite outputs: probability 0, rank last
        g, skipped = gauc(users.flatten(), p.flatten(), y.flatten())
        nd, nd_skipped = list_ndcg(p, y, 10)
        per_task[name] = {
            "auc": auc(p, y), "gauc": g, "gauc_users_skipped_one_class": skipped, "logloss": logloss(p.flatten(), y.flatten()),
            "list_ndcg@10": nd, "list_ndcg_users_skipped_no_positive": nd_skipped,
            "positive_rate": float(y.mean()), "impressions": int(y.numel()),
            "nonfinite_outputs": int(bad.sum()),
        }
    head = per_task[spec.names[spec.binary[0]]] if spec.binary else {}
    metrics = {k: head[k] for k in ("auc", "gauc", "logloss", "list_ndcg@10") if k in head}
    metrics["tasks"] = per_task
    return metrics


@torch.no_grad()
def evaluate_ranking(
    model: Ranker, data: SequenceData, labels: np.ndarray, spec: LabelSpec, split: str, eval_cfg, device="cpu"
) -> dict:
    """Ranking metrics of ``split`` and their protocol: {"metrics", "protocol"}. ``labels`` [T, A]
    per interaction, described by ``spec``."""
    was = model.training
    model.eval()
    users, outs, labs = [], [], []
    ev = eval_cfg
    batches = eval_batches(data, split, model.max_history, ev.batch_size, ev.exclude_history, ev.query_time, ev.holdout, labels)
    for b in progress(batches, data, split, ev):
        b = b.to(device)
        out = model.rank(b.items, b.labels, b.candidates, b.timestamps, b.query_time)  # [B K A]
        users.append(b.users.unsqueeze(1).expand_as(b.candidates).cpu())
        outs.append(out.float().cpu())
        labs.append(b.candidate_labels.cpu())
    model.train(was)
    metrics = ranking_metrics(torch.cat(users), torch.cat(outs), torch.cat(labs), spec)
    return {"metrics": metrics, "protocol": ranking_protocol(data, labels, spec, split, eval_cfg, model.max_history)}


def ranking_protocol(data: SequenceData, labels: np.ndarray, spec: LabelSpec, split: str, eval_cfg, max_history: int) -> dict:
    return {
        "ranking_split": split_desc(split, eval_cfg.holdout),
        "ranking_impressions": f"every held-out interaction of the block (K={eval_cfg.holdout} per user), scored from the history before the block",
        "ranking_labels": spec.description,
        "ranking_metrics": METRICS_DESC,
        "ranking_history": f"last {max_history} interactions with their feedback",
        "label_stats": label_stats(labels, spec, data, eval_cfg.holdout),
    }
