"""Evaluation of the classic two-stage cascade: a retriever's top-K reordered by a ranker.

Each user's list is the retriever's top-K (history excluded) reordered by the ranker's probability
of one binary task, followed by the rest of the catalogue in retrieval order; the target's rank is
read from that list (a target outside the top-K keeps its full-catalogue retrieval rank).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from genrec.data.batches import eval_batches
from genrec.data.prepare import SequenceData
from genrec.errors import ConfigError
from genrec.evaluation.evaluator import target_ranks
from genrec.models.contracts import Ranker, Retriever


@torch.no_grad()
def cascade_ranks(
    retriever: Retriever, ranker: Ranker, data: SequenceData, labels: np.ndarray, split: str, eval_cfg, k: int,
    task_index: int, device="cpu",
) -> torch.Tensor:
    """[users] rank of each target in the reranked list (see the module docstring)."""
    if retriever.max_history != ranker.max_history:
        raise ConfigError(f"cascade: the stages read different history lengths ({retriever.max_history} vs {ranker.max_history}); align model.max_seq_len")
    retriever.eval(), ranker.eval()
    out = []
    ev = eval_cfg
    for b in eval_batches(data, split, retriever.max_history, ev.batch_size, ev.exclude_history, ev.query_time, ev.holdout, labels):
        b = b.to(device)
        base = target_ranks(retriever, b, ev.item_chunk_size)  # [B]
        user = retriever.user_vectors(b.items, b.timestamps, b.query_time)
        _, cand = retriever.topk(user, k, b.exclude)  # [B K]
        logits = ranker.rank(b.items, b.labels, cand, b.timestamps, b.query_time)[..., task_index].float()
        probs = torch.sigmoid(logits.masked_fill(~torch.isfinite(logits), float("-inf")))  # non-finite: rank last
        order = probs.argsort(dim=1, descending=True, stable=True)
        reranked = cand.gather(1, order)  # [B K]
        hit = reranked == b.targets.unsqueeze(1)
        pos = torch.where(hit.any(1), hit.float().argmax(1).double(), base.to(torch.double))
        pos[torch.isinf(base)] = math.inf  # excluded targets stay misses
        out.append(pos.cpu())
    return torch.cat(out)
