"""Ranking metrics from 0-based target ranks (rank 0 = top; ``inf`` = never ranked, a miss)."""

from __future__ import annotations

import torch


def per_user(ranks: torch.Tensor, ks: list[int]) -> dict[str, torch.Tensor]:
    """Each user's value of every metric: HR@K = 1 if ranked < K; NDCG@K = 1/log2(rank + 2) if
    ranked < K (one relevant item, so the ideal DCG is 1); MRR = 1/(rank + 1) with no cut-off."""
    ranks = ranks.double()
    gain = 1.0 / torch.log2(ranks + 2.0)  # inf rank -> 0
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = hit.double()
        out[f"ndcg@{k}"] = torch.where(hit, gain, torch.zeros_like(gain))
    out["mrr"] = 1.0 / (ranks + 1.0)
    return out


def metrics_from_ranks(ranks: torch.Tensor, ks: list[int]) -> dict[str, float]:
    """Means over users of :func:`per_user`."""
    if ranks.numel() == 0:
        raise ValueError("no ranks to average")
    return {name: values.mean().item() for name, values in per_user(ranks, ks).items()}
