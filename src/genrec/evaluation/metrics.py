"""Ranking metrics from 0-based target ranks (rank 0 = top; ``inf`` = never ranked, a miss)."""

from __future__ import annotations

import torch


def metrics_from_ranks(ranks: torch.Tensor, ks: list[int]) -> dict[str, float]:
    """HR@K = share of targets ranked < K; NDCG@K = mean 1/log2(rank + 2) over those (one relevant
    item, so the ideal DCG is 1); MRR = mean 1/(rank + 1) with no cut-off."""
    ranks = ranks.double()
    if ranks.numel() == 0:
        raise ValueError("no ranks to average")
    out: dict[str, float] = {}
    gain = 1.0 / torch.log2(ranks + 2.0)  # inf rank -> 0
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = hit.double().mean().item()
        out[f"ndcg@{k}"] = torch.where(hit, gain, torch.zeros_like(gain)).mean().item()
    out["mrr"] = (1.0 / (ranks + 1.0)).mean().item()
    return out
