"""Popularity baseline through the same full-catalogue evaluator, on validation and test.

    GENREC_SOURCE=../shared/data python benchmarks/popularity.py beauty toys

Items are ranked by their count in the data the split may train on (training items for
validation; training + validation items for test), the user's earlier items excluded. A
diagnostic for how much harder the test split is than the validation split.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from genrec.config import DataConfig, EvalConfig
from genrec.data.splits import train_end
from genrec.data.prepare import load_prepared, prepare
from genrec.evaluation.evaluator import split_ranks
from genrec.evaluation.metrics import metrics_from_ranks
from genrec.models.base import ModelConfig, SequentialRecommender


class Popularity(SequentialRecommender):
    """Every user gets the same scores: item counts (ties broken towards lower ids)."""

    def __init__(self, counts: np.ndarray):
        super().__init__(ModelConfig(name="popularity", num_items=len(counts), embedding_dim=1, l2_normalize=False))
        tie_break = np.arange(len(counts))[::-1] * 1e-6
        with torch.no_grad():
            self.item_embedding.weight[1:, 0] = torch.tensor(counts + tie_break, dtype=torch.float)

    def encode(self, items, timestamps=None, query_timestamps=None, segments=None, behaviours=None, user_tokens=None):
        return torch.ones(*items.shape, 1)


def main() -> None:
    for dataset in sys.argv[1:]:
        data = load_prepared(prepare(DataConfig(dataset=dataset)))
        for split, include_valid in (("valid", False), ("test", True)):
            ends = train_end(data, include_valid)
            seen = np.concatenate([data.items[s:e] for s, e in zip(data.offsets[:-1], ends)])
            model = Popularity(np.bincount(seen, minlength=data.num_items + 1)[1:].astype(np.float64))
            cfg = EvalConfig()  # history max 50 (ModelConfig default), earlier items excluded
            m = metrics_from_ranks(split_ranks(model, data, split, cfg), cfg.ks)
            print(f"{dataset} {split}: ndcg@10 {m['ndcg@10']:.4f}, hr@10 {m['hr@10']:.4f}, mrr {m['mrr']:.4f}")


if __name__ == "__main__":
    main()
