"""DIN ranking: each history item's feedback is predicted from the items before it (strictly
causal target attention), the classic baseline the scaling study compares HSTU's ranker with."""

from __future__ import annotations

import torch

from genrec.data.batches import FeedbackBatch
from genrec.models import DIN, build_model
from genrec.training.losses import ranking_loss
from genrec.training.tasks.interleaved import RankingTask


class DINTask(RankingTask):
    """Same labels, batches and evaluation as :class:`RankingTask`; another model and step."""

    def build_model(self) -> DIN:
        return self.spec.attach(build_model(self.model_config))  # item_features: a clear error for DIN

    def loss(self, model: DIN, batch: FeedbackBatch, epoch: int) -> tuple[torch.Tensor, dict]:
        valid = batch.items != 0  # [B n]
        B, n = batch.items.shape
        causal = torch.ones(n, n, dtype=torch.bool, device=batch.items.device).tril(-1)  # item k sees items < k
        out = model.rank(batch.items, batch.labels, batch.items, visible=causal.expand(B, n, n))
        loss = ranking_loss(out[valid], batch.labels[valid], self.label_spec.kinds)
        return loss, {"ranking_loss": float(loss.detach())}
