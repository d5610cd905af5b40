"""Ranking and unified training over interleaved item/action tokens (HSTU §1.3, UniGRF §2).

- :class:`RankingTask`: the output at ``item_k`` predicts ``action_k`` (BCE per binary task, MSE per
  regression task, summed);
- :class:`UnifiedTask`: the same plus retrieval of ``item_{k+1}`` at ``action_k`` (sampled softmax),
  combined by a loss weighter, optionally with the ranking-driven enhancer.
"""

from __future__ import annotations

import time

import torch

from genrec.data.batches import FeedbackBatch, TrainBatches
from genrec.data.feedback import feedback_normalisation, feedback_range, make_labels
from genrec.data.prepare import SequenceData
from genrec.errors import ConfigError
from genrec.evaluation.evaluator import evaluate
from genrec.evaluation.ranking import evaluate_ranking
from genrec.models import GenerativeRecommender, HeadConfig, InterleavedRanker, build_interleaved
from genrec.training.enhancer import enhance, enhance_negatives
from genrec.training.losses import draw_negatives, sampled_softmax_loss, ranking_loss
from genrec.training.spec import SpecDerived, resolve_spec
from genrec.training.weighting import build_weighter

RANKING_LOSS_DESC = "ranking: BCE per binary task, MSE per regression task, summed"


class RankingTask(SpecDerived):
    """The ranking head over interleaved sequences; the retrieval side is not trained."""

    kind = "ranking"
    trainable = True
    all_parameters_used = False  # the action token of the last interaction feeds nothing

    def __init__(self, cfg, data: SequenceData):
        self.cfg, self.data = cfg, data
        if cfg.train.pack or cfg.train.data_fraction < 1.0 or cfg.train.bucket_by_length:
            raise ConfigError("train.pack, train.bucket_by_length and train.data_fraction apply to retrieval training only")
        self.labels, self.label_spec = make_labels(data, cfg.task)
        self.spec = resolve_spec(data, self.label_spec.names, self.label_spec.kinds, cfg)

    def build_model(self) -> InterleavedRanker:
        shift, scale = feedback_normalisation(self.data, self.labels, self.label_spec, self.cfg.eval.holdout)
        head = HeadConfig(self.label_spec.names, self.label_spec.kinds, self.cfg.task.head_hidden_dim,
                          micro_batch=self.cfg.task.micro_batch, retrieval=self.kind == "unified",
                          action_token=self.cfg.task.action_token, feedback_shift=shift, feedback_scale=scale,
                          feedback_range=feedback_range(self.data, self.labels, self.cfg.eval.holdout))
        return self.spec.attach(build_interleaved(self.model_config, head))

    def batches(self, include_valid: bool = False) -> TrainBatches:
        return TrainBatches(self.data, self.cfg.model.max_seq_len, self.cfg.train.batch_size, include_valid=include_valid,
                            holdout=self.cfg.eval.holdout, labels=self.labels)

    def ranking_loss(self, model: InterleavedRanker, batch: FeedbackBatch):
        """(ranking loss, the encoded history) of one batch."""
        valid = batch.items != 0  # [B n]
        enc = model.encode_history(batch.items, batch.labels, batch.timestamps)
        h_item = enc.hidden[:, 0::2]  # [B n D] outputs at item tokens
        return ranking_loss(model.ranking_outputs(h_item[valid]), batch.labels[valid], self.label_spec.kinds), enc

    def loss(self, model: InterleavedRanker, batch: FeedbackBatch, epoch: int) -> tuple[torch.Tensor, dict]:
        l_rank, _ = self.ranking_loss(model, batch)
        return l_rank, {"ranking_loss": float(l_rank.detach())}

    def evaluate(self, model: InterleavedRanker, split: str, device) -> dict:
        return evaluate_ranking(model, self.data, self.labels, self.label_spec, split, self.cfg.eval, device)

    def describe(self) -> dict:
        return {"task": self.kind, "labels": list(self.label_spec.names), "loss": RANKING_LOSS_DESC}


class UnifiedTask(RankingTask):
    """Retrieval and ranking in one model (UniGRF)."""

    kind = "unified"

    def __init__(self, cfg, data: SequenceData):
        super().__init__(cfg, data)
        spec = self.label_spec
        if not spec.binary and cfg.task.enhancer_on:
            raise ConfigError("the ranking-driven enhancer reads a binary task's probability; none is configured")
        if cfg.train.loss != "sampled_softmax":
            raise ConfigError("unified models train retrieval with train.loss=sampled_softmax")
        name = cfg.task.enhancer_task
        binary_names = [spec.names[i] for i in spec.binary]
        if name and name not in binary_names:
            raise ConfigError(f"task.enhancer_task={name!r} is not a binary task ({binary_names})")
        self.enhancer_index = spec.names.index(name) if name else (spec.binary[0] if spec.binary else 0)
        self.weighter = build_weighter(cfg.task)

    def loss(self, model: GenerativeRecommender, batch: FeedbackBatch, epoch: int) -> tuple[torch.Tensor, dict]:
        l_rank, enc = self.ranking_loss(model, batch)
        l_ret, logs = self._retrieval_loss(model, enc, batch, epoch)
        shared = None
        if self.weighter.needs_shared:
            shared = model.trunk_parameters() if self.cfg.task.weighter == "gradient" else model.shared_parameters()
        loss, weights = self.weighter.combine({"retrieval": l_ret, "ranking": l_rank}, shared)
        logs.update(retrieval_loss=float(l_ret.detach()), ranking_loss=float(l_rank.detach()),
                    w_retrieval=weights["retrieval"], w_ranking=weights["ranking"], **self.weighter.measured)
        return loss, logs

    def state_dict(self) -> dict:
        return {"weighter": self.weighter.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.weighter.load_state_dict(state.get("weighter") or {})

    def _retrieval_loss(self, model: GenerativeRecommender, enc, batch: FeedbackBatch, epoch: int) -> tuple[torch.Tensor, dict]:
        t, task = self.cfg.train, self.cfg.task
        targets = batch.items[:, 1:]
        has = targets != 0  # [B n-1]
        q_all = model.retrieval_vectors(enc.hidden[:, 1::2][:, :-1])  # [B n-1 D] outputs at action tokens
        q, pos = q_all[has], targets[has]
        share = t.negative_sharing == "batch"
        logs: dict = {}
        if task.enhancer_on and epoch >= task.enhancer_warmup_epochs and bool(has.any()):
            start = time.perf_counter()
            neg = None
            if task.enhancer_pool == "negatives":  # the pool is drawn from the step's own negatives
                neg = draw_negatives(model.config.num_items, q.size(0), t.num_negatives, share, q.device)
                ex = enhance_negatives(model, enc, q_all, batch.items, batch.timestamps, task, self.enhancer_index, neg)
            else:
                ex = enhance(model, enc, q_all, batch.items, batch.timestamps, task, self.enhancer_index)
            logs.update(ex.stats, enhancer_seconds=time.perf_counter() - start)
            loss = sampled_softmax_loss(q, pos, model, t.num_negatives, t.temperature, share, ex.hard, ex.potential, ex.mode,
                                        negatives=neg)
        else:
            loss = sampled_softmax_loss(q, pos, model, t.num_negatives, t.temperature, share)
        return loss, logs

    def evaluate(self, model: GenerativeRecommender, split: str, device) -> dict:
        ranking = super().evaluate(model, split, device)
        retrieval = evaluate(model, self.data, split, self.cfg.eval, device, self.labels)
        return {"metrics": {**retrieval["metrics"], **ranking["metrics"]}, "protocol": {**retrieval["protocol"], **ranking["protocol"]}}

    def describe(self) -> dict:
        task, t = self.cfg.task, self.cfg.train
        enhancer = ({"pool": task.enhancer_pool, "hard_negatives": task.hard_negatives, "candidate_pool": task.candidate_pool,
                     **({"rows_examined": task.enhancer_rows} if task.enhancer_pool == "negatives" else {"pool_sample": task.pool_sample}),
                     "potential_positive_alpha": task.potential_positive_alpha, "mode": task.potential_positive_mode,
                     "warmup_epochs": task.enhancer_warmup_epochs, "scores": "detached"} if task.enhancer_on else "off")
        loss = (f"unified: retrieval sampled softmax ({t.num_negatives} uniform negatives per {t.negative_sharing}, "
                f"temperature {t.temperature}) + ranking BCE/MSE, combined by the {task.weighter} weighter")
        return {"task": self.kind, "labels": list(self.label_spec.names), "weighter": task.weighter, "enhancer": enhancer, "loss": loss}
