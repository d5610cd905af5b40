"""What a run trains for: retrieval, ranking, or both (unified). The trainer drives any of them.

A task builds its model, its training batches, the loss of one step and its evaluation:

- :class:`RetrievalTask`: next item over item-only sequences (the core recipe);
- :class:`FeedbackTask`: interleaved item/action sequences (``ranking``: the ranking head only;
  ``unified``: retrieval at action tokens + ranking at item tokens, with the UniGRF enhancer and
  weighter), or DIN for ``ranking``.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from genrec.data.batches import TrainBatches
from genrec.data.feedback import FeedbackBatches, LabelSpec, impression_batches, label_stats, make_labels
from genrec.data.prepare import SequenceData
from genrec.errors import ConfigError
from genrec.evaluation.evaluator import evaluate, split_desc
from genrec.evaluation.metrics import auc, gauc, list_ndcg, logloss
from genrec.models import BACKBONES, DIN, GenerativeRecommender, HeadConfig, build_model
from genrec.training.enhancer import enhance
from genrec.training.losses import enhanced_sampled_softmax_loss, ranking_loss, retrieval_loss
from genrec.training.weighting import build_weighter


class RetrievalTask:
    kind = "retrieval"

    def __init__(self, cfg, data: SequenceData):
        self.cfg, self.data = cfg, data

    def build_model(self):
        return build_model(self.cfg.model)

    def batches(self, include_valid: bool = False):
        t = self.cfg.train
        return TrainBatches(
            self.data, self.cfg.model.max_seq_len, t.batch_size, t.bucket_by_length, include_valid, self.cfg.eval.holdout, t.pack,
            t.data_fraction, t.seed,
        )

    def loss(self, model, batch, epoch: int) -> tuple[torch.Tensor, dict]:
        return retrieval_loss(model, batch, self.cfg.train), {}

    def evaluate(self, model, split: str, device) -> dict:
        return evaluate(model, self.data, split, self.cfg.eval, device)

    def describe(self) -> dict:
        return {}


class FeedbackTask:
    """Ranking or unified training over interleaved item/action sequences (or DIN for ranking)."""

    def __init__(self, cfg, data: SequenceData):
        self.cfg, self.data, self.kind = cfg, data, cfg.task.kind
        if cfg.train.pack or cfg.train.data_fraction < 1.0:
            raise ConfigError("train.pack and train.data_fraction apply to retrieval training only")
        self.labels, self.spec = make_labels(data, cfg.task)
        if not self.spec.binary and self.kind == "unified" and cfg.task.enhancer_on:
            raise ConfigError("the ranking-driven enhancer reads a binary task's probability; none is configured")
        self.is_din = cfg.model.name == "din"
        if self.is_din and self.kind != "ranking":
            raise ConfigError("model.name=din ranks only: use it with task.kind=ranking")
        if not self.is_din and cfg.model.name not in BACKBONES:
            raise ConfigError(f"model.name={cfg.model.name!r} cannot be a {self.kind} backbone; use one of {BACKBONES} or din")
        name = cfg.task.enhancer_task
        binary_names = [self.spec.names[i] for i in self.spec.binary]
        if name and name not in binary_names:
            raise ConfigError(f"task.enhancer_task={name!r} is not a binary task ({binary_names})")
        self.enhancer_index = self.spec.names.index(name) if name else (self.spec.binary[0] if self.spec.binary else 0)
        self.weighter = build_weighter(cfg.task) if self.kind == "unified" else None
        self.step_log: list[dict] = []

    # ---- model and batches ------------------------------------------------------------------
    def build_model(self):
        if self.is_din:
            self.cfg.model.task_names, self.cfg.model.task_kinds = self.spec.names, self.spec.kinds
            return build_model(self.cfg.model)
        head = HeadConfig(self.spec.names, self.spec.kinds, self.cfg.task.head_hidden_dim, micro_batch=self.cfg.task.micro_batch)
        return GenerativeRecommender(build_model(self.cfg.model), head)

    @property
    def window(self) -> int:
        """Interactions per training window (two tokens each for interleaved models)."""
        L = self.cfg.model.max_seq_len
        return L if self.is_din else L // 2

    def batches(self, include_valid: bool = False):
        return FeedbackBatches(self.data, self.labels, self.window, self.cfg.train.batch_size, include_valid, self.cfg.eval.holdout)

    # ---- one step ---------------------------------------------------------------------------
    def loss(self, model, batch, epoch: int) -> tuple[torch.Tensor, dict]:
        valid = batch.items != 0  # [B n]
        if self.is_din:
            n = batch.items.size(1)
            causal = torch.ones(n, n, dtype=torch.bool, device=batch.items.device).tril(-1)  # item k sees items < k
            out = model.rank(batch.items, batch.labels, batch.items, visible=causal.expand(batch.items.size(0), n, n))
            loss = ranking_loss(out[valid], batch.labels[valid], self.spec.kinds)
            return loss, {"ranking_loss": float(loss.detach())}
        enc = model.encode_history(batch.items, batch.labels, batch.timestamps)
        h_item, h_act = enc.hidden[:, 0::2], enc.hidden[:, 1::2]  # [B n D] each
        l_rank = ranking_loss(model.ranking_outputs(h_item[valid]), batch.labels[valid], self.spec.kinds)
        if self.kind == "ranking":
            return l_rank, {"ranking_loss": float(l_rank.detach())}
        l_ret, logs = self._retrieval_loss(model, enc, h_act, batch, epoch)
        shared = list(model.backbone.parameters())[-4:] if self.cfg.task.weighter == "gradnorm" else None
        loss, weights = self.weighter.combine({"retrieval": l_ret, "ranking": l_rank}, shared)
        logs.update(retrieval_loss=float(l_ret.detach()), ranking_loss=float(l_rank.detach()), w_retrieval=weights["retrieval"], w_ranking=weights["ranking"])
        return loss, logs

    def _retrieval_loss(self, model, enc, h_act, batch, epoch) -> tuple[torch.Tensor, dict]:
        t, task = self.cfg.train, self.cfg.task
        targets = batch.items[:, 1:]
        has = targets != 0  # [B n-1]
        q_all = model.retrieval_vectors(h_act[:, :-1])  # [B n-1 D]
        q, pos = q_all[has], targets[has]
        if t.loss != "sampled_softmax":
            raise ConfigError("unified models train retrieval with train.loss=sampled_softmax")
        share = t.negative_sharing == "batch"
        logs: dict = {}
        if task.enhancer_on and epoch >= task.enhancer_warmup_epochs and bool(has.any()):
            start = time.perf_counter()
            ex = enhance(model, enc, q_all, batch.items, batch.timestamps, task, self.enhancer_index)
            logs.update(ex.stats, enhancer_seconds=time.perf_counter() - start)
            loss = enhanced_sampled_softmax_loss(q, pos, model, t.num_negatives, t.temperature, share, ex.hard, ex.potential, ex.mode)
        else:
            loss = enhanced_sampled_softmax_loss(q, pos, model, t.num_negatives, t.temperature, share)
        return loss, logs

    # ---- evaluation -------------------------------------------------------------------------
    def evaluate(self, model, split: str, device) -> dict:
        ranking = self.evaluate_ranking(model, split, device)
        if self.kind != "unified":
            return ranking
        retrieval = evaluate(model, self.data, split, self.cfg.eval, device, self.labels)
        return {"metrics": {**retrieval["metrics"], **ranking["metrics"]}, "protocol": {**retrieval["protocol"], **ranking["protocol"]}}

    @torch.no_grad()
    def evaluate_ranking(self, model, split: str, device) -> dict:
        ev = self.cfg.eval
        was = model.training
        model.eval()
        users, outs, labs = [], [], []
        for b in impression_batches(self.data, self.labels, split, model.max_history, ev.batch_size, ev.holdout, ev.query_time):
            b = b.to(device)
            out = model.rank(b.items, b.labels, b.candidates, b.timestamps, b.query_time)  # [B K A]
            users.append(b.users.unsqueeze(1).expand_as(b.candidates).cpu())
            outs.append(out.float().cpu())
            labs.append(b.candidate_labels.cpu())
        model.train(was)
        return {"metrics": ranking_metrics(torch.cat(users), torch.cat(outs), torch.cat(labs), self.spec), "protocol": self.protocol(split)}

    def protocol(self, split: str) -> dict:
        ev, task = self.cfg.eval, self.cfg.task
        label = (f"like = rating >= {task.positive_rating}" if task.labels == "rating"
                 else f"binary {task.binary_actions} (value > 0), regression {task.regression_actions}")
        return {
            "ranking_split": split_desc(split, ev.holdout),
            "ranking_impressions": f"every held-out interaction of the block (K={ev.holdout} per user), scored from the history before the block",
            "ranking_labels": label,
            "ranking_metrics": "auc over all impressions (ties 1/2); gauc = per-user AUC weighted by impressions, users with one class skipped and counted; logloss; list_ndcg = NDCG of each user's held-out block ordered by score (gain = label, pessimistic ties), users without a positive skipped",
            "ranking_history": f"last {self.cfg.model.max_seq_len if self.is_din else (self.cfg.model.max_seq_len - 1) // 2} interactions with their feedback",
            "label_stats": label_stats(self.labels, self.spec, self.data, ev.holdout),
        }

    def describe(self) -> dict:
        task = self.cfg.task
        out = {"task": self.kind, "labels": list(self.spec.names)}
        if self.kind == "unified":
            out["weighter"] = task.weighter
            out["enhancer"] = ({"hard_negatives": task.hard_negatives, "candidate_pool": task.candidate_pool, "pool_sample": task.pool_sample,
                                "potential_positive_alpha": task.potential_positive_alpha, "mode": task.potential_positive_mode,
                                "warmup_epochs": task.enhancer_warmup_epochs, "scores": "detached"} if task.enhancer_on else "off")
        return out


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


def build_task(cfg, data: SequenceData):
    if cfg.task.kind == "retrieval":
        return RetrievalTask(cfg, data)
    if cfg.task.kind in ("ranking", "unified"):
        return FeedbackTask(cfg, data)
    raise ConfigError(f"task.kind={cfg.task.kind!r} is not trained by one Trainer (a cascade trains two runs)")


def select_score(metrics: dict, select_metric: str) -> float:
    """Validation score used for selection: a metric, or the sum of several (``ndcg@10+auc``)."""
    total = 0.0
    for part in select_metric.split("+"):
        value = metrics.get(part.strip())
        if value is None or (isinstance(value, float) and np.isnan(value)):
            raise ConfigError(f"eval.select_metric={select_metric!r}: {part.strip()!r} is not computed for this task")
        total += value
    return total
