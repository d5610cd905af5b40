"""Retrieval: the next item at every position of item-only sequences (the core recipe)."""

from __future__ import annotations

import functools

import numpy as np
import torch

from genrec.data.batches import TrainBatch, TrainBatches
from genrec.data.splits import cold_item_ids
from genrec.data.prepare import SequenceData
from genrec.evaluation.evaluator import evaluate
from genrec.models import BACKBONES, Retriever, build_model
from genrec.models.base import history_length
from genrec.errors import ConfigError
from genrec.training.losses import LOSSES, retrieval_loss
from genrec.training.spec import SpecDerived, resolve_spec


class RetrievalTask(SpecDerived):
    kind = "retrieval"
    all_parameters_used = True
    trainable = True

    def __init__(self, cfg, data: SequenceData):
        if cfg.model.name not in (*BACKBONES, "popularity"):
            raise ConfigError(f"model.name={cfg.model.name!r} cannot do retrieval; use one of {BACKBONES}")
        self.cfg, self.data = cfg, data
        self.spec = resolve_spec(data, cfg=cfg)

    def build_model(self) -> Retriever:
        return self.spec.attach(build_model(self.model_config))

    def batches(self, include_valid: bool = False) -> TrainBatches:
        t = self.cfg.train
        return TrainBatches(
            self.data, history_length(self.cfg.model), t.batch_size, t.bucket_by_length, include_valid, self.cfg.eval.holdout, t.pack,
            t.data_fraction, t.seed, skip_items=self.cold_items,
        )

    @functools.cached_property
    def cold_items(self) -> np.ndarray | None:
        """Item ids held out of training entirely (``data.cold_items``), or None."""
        return cold_item_ids(self.data.num_items, self.cfg.data.cold_items) if self.cfg.data.cold_items else None

    def loss(self, model: Retriever, batch: TrainBatch, epoch: int) -> tuple[torch.Tensor, dict]:
        device = batch.items.device
        return retrieval_loss(model, batch, self.cfg.train, self.never_negative(device), self.negative_ranges(device)), {}

    def negative_ranges(self, device) -> torch.Tensor | None:
        """[G, 2] item id range of each domain when negatives come from the target's domain, else None."""
        if self.cfg.train.negatives_from != "target_domain":
            return None
        return torch.tensor([[d["first_item"], d["end_item"]] for d in self.data.stats["domains"]], device=device)

    def never_negative(self, device) -> torch.Tensor | None:
        """Item ids the loss may not draw as negatives: the cold-item check's held-out items."""
        return None if self.cold_items is None else torch.from_numpy(self.cold_items).to(device)

    def evaluate(self, model: Retriever, split: str, device) -> dict:
        return evaluate(model, self.data, split, self.cfg.eval, device)

    def describe(self) -> dict:
        out = {"task": self.kind, "loss": LOSSES[self.cfg.train.loss].describe(self.cfg.train)}
        if self.cold_items is not None:
            out["cold_items"] = (f"{len(self.cold_items)} of {self.data.num_items} items ({self.cfg.data.cold_items:.0%}, a fixed draw) "
                                 "never occur in training, neither as input, target nor sampled negative; they stay in the catalogue "
                                 "and in evaluation")
        return out
