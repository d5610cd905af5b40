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


# ---- ranking (feedback prediction) metrics ----------------------------------------------------
def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC = P(score of a random positive > a random negative), ties counting 1/2
    (Mann-Whitney U with average ranks). NaN when only one class is present."""
    scores, labels = scores.double().flatten(), labels.flatten() > 0.5
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = scores.argsort()
    sorted_s = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.double)
    # average the ranks of tied scores
    uniq, inverse, counts = torch.unique_consecutive(sorted_s, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    avg = ends - (counts.double() - 1) / 2  # mean of ranks start..end of each tie group
    ranks[order] = avg[inverse]
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def gauc(groups: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Group AUC: per-group (user) AUC averaged with weights = the group's impressions. Groups with
    one class only have no AUC and are skipped. Returns (gauc, number of groups skipped)."""
    total, weight, skipped = 0.0, 0, 0
    for g in torch.unique(groups):
        sel = groups == g
        a = auc(scores[sel], labels[sel])
        if a != a:  # NaN: one class only
            skipped += 1
            continue
        n = int(sel.sum())
        total, weight = total + a * n, weight + n
    return (total / weight if weight else float("nan")), skipped


def logloss(probs: torch.Tensor, labels: torch.Tensor, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (clipped to [eps, 1 - eps])."""
    p = probs.double().clamp(eps, 1 - eps)
    y = labels.double()
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


def list_ndcg(scores: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[float, int]:
    """NDCG@k of ranking each row's candidate list by score, gain = label (binary relevance),
    pessimistic ties (equal scores rank negatives first). Rows without a positive have no ideal
    ranking and are skipped. scores, labels [B, C] -> (mean over rows with a positive, rows skipped)."""
    labels = labels.double()
    # score descending, ties broken with lower labels first: sort by label, then stably by score
    by_label = labels.argsort(dim=1, stable=True)
    by_score = scores.double().gather(1, by_label).argsort(dim=1, descending=True, stable=True)
    order = by_label.gather(1, by_score)
    gains = labels.gather(1, order)[:, :k]
    disc = 1.0 / torch.log2(torch.arange(2, gains.size(1) + 2, dtype=torch.double))
    dcg = (gains * disc).sum(1)
    ideal = (labels.sort(dim=1, descending=True).values[:, :k] * disc[: min(k, labels.size(1))]).sum(1)
    has_pos = ideal > 0
    if not bool(has_pos.any()):
        return float("nan"), int(len(labels))
    return float((dcg[has_pos] / ideal[has_pos]).mean()), int((~has_pos).sum())
