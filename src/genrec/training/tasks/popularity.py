"""The popularity baseline as a task: the model is fit in closed form (item counts over the
training split) when it is built; nothing is trained by gradient, so the trainer only validates,
saves and tests it (see :class:`~genrec.models.popularity.Popularity`)."""

from __future__ import annotations

import numpy as np
import torch

from genrec.data.batches import TrainBatches
from genrec.data.splits import train_end
from genrec.errors import ConfigError
from genrec.models import build_model
from genrec.models.popularity import Popularity
from genrec.training.tasks.retrieval import RetrievalTask


class PopularityTask(RetrievalTask):
    trainable = False

    def __init__(self, cfg, data):
        if cfg.train.refit:
            raise ConfigError("model.name=popularity: train.refit has nothing to retrain (the counts come from the training split)")
        super().__init__(cfg, data)

    def build_model(self) -> Popularity:
        model = self.spec.attach(build_model(self.model_config))  # item_features: a clear error
        starts, lengths = self.data.offsets[:-1], self.data.lengths
        n_train = np.repeat(train_end(self.data, False, self.cfg.eval.holdout) - starts, lengths)  # per interaction
        position = np.arange(len(self.data.items)) - np.repeat(starts, lengths)  # within its user
        counted = position < n_train
        if self.data.behaviours is not None and self.data.behaviours.targets is not None:
            counted &= self.data.behaviours.targets  # popularity among the behaviours retrieval predicts
        if self.cold_items is not None:
            counted &= ~np.isin(self.data.items, self.cold_items)  # never seen in training
        model.fit_counts(torch.from_numpy(self.data.items[counted]))
        return model

    def batches(self, include_valid: bool = False) -> TrainBatches:
        return TrainBatches(self.data, self.cfg.model.max_seq_len, self.cfg.train.batch_size, include_valid=include_valid,
                            holdout=self.cfg.eval.holdout)

    def describe(self) -> dict:
        counted = "target-behaviour interaction" if self.data.behaviours is not None and self.data.behaviours.targets is not None else "interaction"
        return {"task": "retrieval", "loss": f"none: item popularity ({counted} counts over the training split), no training"}
