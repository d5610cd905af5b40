"""Retrieval losses over the scoring contract: a loss at every position with a target.

All score with the model's own ``encode`` and ``item_vectors`` (cosine similarities when the
model L2-normalises) divided by a temperature. ``train.loss`` names an entry of :data:`LOSSES`;
a new loss is one function with the uniform signature ``fn(q, pos, model, train_cfg)`` plus one
registry line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from genrec.config import TrainConfig
from genrec.data.batches import TrainBatch
from genrec.models.base import SequentialRecommender
from genrec.training.logits import gathered_logits, softmax_cross_entropy


def _positions(model: SequentialRecommender, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
    h = model.encode(batch.items, batch.timestamps, batch.query_timestamps, batch.segments, batch.behaviours, batch.user_tokens)  # [B N D]
    valid = batch.targets != 0
    return h[valid], batch.targets[valid]  # [T D], [T]


def sampled_softmax_loss(
    q: torch.Tensor,
    pos: torch.Tensor,
    model: SequentialRecommender,
    num_negatives: int,
    temperature: float,
    share: bool,
    hard: torch.Tensor | None = None,
    potential: torch.Tensor | None = None,
    mode: str = "remove",
    never: torch.Tensor | None = None,
    ranges: torch.Tensor | None = None,
    negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax over the positive and uniform random negatives (ids 1..num_items). Negatives that
    hit the positive are masked out, as in the HSTU reference. share: one negative set per batch.
    ``negatives``: the set already drawn (:func:`draw_negatives`, [1 | T, K]) instead of a new draw.

    The ranking-driven enhancer's extras (:mod:`genrec.training.enhancer`): ``hard`` [T, m] extra
    negatives (0 = none); ``potential`` [T, P] item ids (0 = none) that are never negatives and, with
    ``mode="relabel"``, count as positives: loss = −log Σ_{pos ∪ potential} / Σ_all.
    ``never`` [n]: item ids masked out like accidental hits (the cold-item check's held-out items).
    ``ranges`` [G, 2]: item id ranges [first, end) of multi-domain data; each position's negatives
    come from its target's range (shared: one set per range)."""
    T, num_items = q.size(0), model.config.num_items
    if negatives is not None:
        if ranges is not None:
            raise ValueError("pre-drawn negatives are uniform over the catalogue: not with multi-domain ranges")
        neg = negatives
    elif ranges is None:
        neg = draw_negatives(num_items, T, num_negatives, share, q.device)
    else:
        group = torch.searchsorted(ranges[:, 1].contiguous(), pos, right=True)  # [T] the target's range
        first, size = (ranges[:, 0], ranges[:, 1] - ranges[:, 0]) if share else (ranges[group, 0], ranges[group, 1] - ranges[group, 0])
        neg = first.unsqueeze(1) + (torch.rand(first.size(0), num_negatives, device=q.device) * size.unsqueeze(1)).long()  # [G|T K]
    if share:
        neg_logit = q @ model.item_vectors(neg.reshape(-1)).T  # [T K] (with ranges [T G*K]: every range's set)
        if ranges is not None:  # each position keeps its own range's K columns
            cols = group.unsqueeze(1) * num_negatives + torch.arange(num_negatives, device=q.device)
            neg_logit, neg = neg_logit.gather(1, cols), neg[group]
    else:  # blockwise, never [T K D] (genrec.training.logits)
        neg_logit = gathered_logits(q, model.item_vectors, neg, num_items)  # [T K]
    neg = neg.expand(T, -1)
    if hard is not None:  # [T m]: few per position, so a gather is cheap
        neg = torch.cat([neg, hard], dim=1)
        neg_logit = torch.cat([neg_logit, torch.einsum("td,tmd->tm", q, model.item_vectors(hard))], dim=1)
    bad = neg == pos.unsqueeze(1)  # accidental hits
    if hard is not None:
        bad = bad | (neg == 0)  # no hard negative at that position
    if never is not None:
        bad = bad | torch.isin(neg, never)
    if potential is not None:  # compared only at the positions that have one (the enhancer examines a few rows)
        rows = torch.nonzero((potential != 0).any(1)).squeeze(1)  # [R]
        p = potential[rows].unsqueeze(1)  # [R 1 P]
        bad[rows] = bad[rows] | ((neg[rows].unsqueeze(-1) == p) & (p != 0)).any(-1)
    neg_logit = neg_logit.float().masked_fill(bad, float("-inf")) / temperature
    pos_logit = (q * model.item_vectors(pos)).sum(-1, keepdim=True).float() / temperature  # [T 1]
    if potential is not None and mode == "relabel":
        pp = (q.unsqueeze(1) * model.item_vectors(potential)).sum(-1).float() / temperature  # [T P]
        pp = pp.masked_fill((potential == 0) | (potential == pos.unsqueeze(1)), float("-inf"))
        numer = torch.logsumexp(torch.cat([pos_logit, pp], 1), dim=1)
        denom = torch.logsumexp(torch.cat([pos_logit, pp, neg_logit], 1), dim=1)
        return (denom - numer).mean()
    logits = torch.cat([pos_logit, neg_logit], dim=1)
    return F.cross_entropy(logits, torch.zeros(T, dtype=torch.long, device=q.device))


def draw_negatives(num_items: int, positions: int, num_negatives: int, share: bool, device) -> torch.Tensor:
    """Uniform negative item ids 1..num_items: [1, K] shared by the batch, or [positions, K]."""
    return torch.randint(1, num_items + 1, (1 if share else positions, num_negatives), device=device)


def in_batch_loss(q: torch.Tensor, pos: torch.Tensor, model: SequentialRecommender, temperature: float) -> torch.Tensor:
    """Softmax over the distinct targets of the batch (each counted once, so no accidental hits)."""
    cand, label = torch.unique(pos, return_inverse=True)
    logits = (q @ model.item_vectors(cand).T).float() / temperature  # [T C]
    return F.cross_entropy(logits, label)


def mixed_loss(q: torch.Tensor, pos: torch.Tensor, model: SequentialRecommender, num_negatives: int, temperature: float,
               never: torch.Tensor | None = None) -> torch.Tensor:
    """Mixed negative sampling (Yang et al., WWW 2020 companion): a softmax over the batch's
    distinct targets (as :func:`in_batch_loss`) and ``num_negatives`` uniform ids 1..num_items
    drawn once for the batch.
    In-batch negatives are drawn by popularity, so they are hard but never reach the long tail;
    the uniform ones cover it. Every item is a candidate once: repeated uniform draws count once,
    and a uniform id that is also a target of the batch is dropped (it is in the in-batch part), so
    no accidental hit needs a mask. No logQ correction: every candidate's logit is its plain score.
    ``never``: ids that are no candidate. Under torchrun each process takes its own share of the
    batch's targets and its own uniform set (as ``in_batch`` does), not the global batch's."""
    cand, label = torch.unique(pos, return_inverse=True)
    extra = draw_negatives(model.config.num_items, 1, num_negatives, True, q.device)[0].unique()
    drop = torch.isin(extra, cand)
    if never is not None:
        drop = drop | torch.isin(extra, never)
    logits = (q @ model.item_vectors(torch.cat([cand, extra])).T).float() / temperature  # [T C+K']
    logits = logits.masked_fill(torch.cat([torch.zeros_like(cand, dtype=torch.bool), drop]), float("-inf"))
    return F.cross_entropy(logits, label)


def full_softmax_loss(q: torch.Tensor, pos: torch.Tensor, model: SequentialRecommender, temperature: float,
                      matmul: str = "fp32") -> torch.Tensor:
    """Softmax over the whole catalogue, by item blocks (never [T, num_items] logits); ``matmul``:
    the operand dtype of its matmuls (``train.softmax_matmul``)."""
    return softmax_cross_entropy(q, model.item_vectors(start=1), pos - 1, temperature, matmul)


@dataclass(frozen=True)
class RetrievalLoss:
    """A next-item loss as ``train.loss`` names it: the loss, its protocol text, its FLOPs count."""

    fn: Callable[..., torch.Tensor]
    """(q [T D] query vectors, pos [T] target ids, model, train config) -> mean loss over the T
    positions; the built-in losses also take ``never=`` item ids that may not be negatives (the
    cold-item check's held-out items), passed only when there are some; ``sampled_softmax`` also
    ``ranges=`` (``train.negatives_from: target_domain``)."""
    describe: Callable[[TrainConfig], str]
    """Protocol text written into the run's metrics (e.g. "full softmax, temperature 0.05")."""
    pairs: Callable[[TrainConfig, int, float], float]
    """(train config, catalogue size, target tokens) -> query-item scores per step (FLOPs model)."""


LOSSES: dict[str, RetrievalLoss] = {
    "sampled_softmax": RetrievalLoss(
        lambda q, pos, model, t, never=None, ranges=None: sampled_softmax_loss(
            q, pos, model, t.num_negatives, t.temperature, t.negative_sharing == "batch", never=never, ranges=ranges),
        lambda t: (f"sampled softmax, {t.num_negatives} uniform negatives per {t.negative_sharing}"
                   + (" (per domain), drawn from the target's domain" if t.negatives_from == "target_domain" else "")
                   + f", temperature {t.temperature}"),
        lambda t, num_items, tokens: (1 + t.num_negatives) * tokens,
    ),
    # pairs: counted as 1 + num_negatives per target, as the FLOPs model always has (the batch's
    # distinct targets would be exact, but they are not known before the step)
    "in_batch": RetrievalLoss(
        lambda q, pos, model, t, never=None: in_batch_loss(q, pos, model, t.temperature),  # never a target: never a candidate
        lambda t: f"in batch, temperature {t.temperature}",
        lambda t, num_items, tokens: (1 + t.num_negatives) * tokens,
    ),
    # pairs: the batch's distinct targets (at most the target tokens) + the uniform set, per target
    "mixed": RetrievalLoss(
        lambda q, pos, model, t, never=None: mixed_loss(q, pos, model, t.num_negatives, t.temperature, never),
        lambda t: f"mixed negatives: the batch's other targets + {t.num_negatives} uniform negatives shared per batch, "
                  f"temperature {t.temperature}",
        lambda t, num_items, tokens: (min(tokens, num_items) + t.num_negatives) * tokens,
    ),
    "full_softmax": RetrievalLoss(
        lambda q, pos, model, t, never=None: full_softmax_loss(q, pos, model, t.temperature, t.softmax_matmul),  # (config refuses never)
        lambda t: f"full softmax, temperature {t.temperature}" + (f", {t.softmax_matmul} matmul operands" if t.softmax_matmul != "fp32" else ""),
        lambda t, num_items, tokens: num_items * tokens,
    ),
}


def retrieval_loss(model: SequentialRecommender, batch: TrainBatch, train_cfg: TrainConfig,
                   never: torch.Tensor | None = None, ranges: torch.Tensor | None = None) -> torch.Tensor:
    """The configured next-item loss (``train.loss``), averaged over positions with a target;
    ``never``: item ids that are never negatives (the cold-item check's held-out items);
    ``ranges`` [G, 2]: draw each position's negatives from its target's id range (domains)."""
    q, pos = _positions(model, batch)
    return positions_loss(q, pos, model, train_cfg, never, ranges)


def positions_loss(q: torch.Tensor, pos: torch.Tensor, model: SequentialRecommender, train_cfg: TrainConfig,
                   never: torch.Tensor | None = None, ranges: torch.Tensor | None = None) -> torch.Tensor:
    """The configured loss of query vectors q [T, D] for targets pos [T]; ``never`` and ``ranges``
    as in :func:`retrieval_loss` (a registered loss needs the keywords only when they are used)."""
    extra = {} if never is None else {"never": never}
    if ranges is not None:
        extra["ranges"] = ranges
    return LOSSES[train_cfg.loss].fn(q, pos, model, train_cfg, **extra)


def ranking_loss(outputs: torch.Tensor, labels: torch.Tensor, kinds: tuple[str, ...]) -> torch.Tensor:
    """outputs, labels [T, A] -> sum over tasks of the mean BCE (binary, on logits) or MSE (regression)."""
    total = outputs.new_zeros((), dtype=torch.float32)
    for a, kind in enumerate(kinds):
        out, y = outputs[:, a].float(), labels[:, a].float()
        total = total + (F.binary_cross_entropy_with_logits(out, y) if kind == "binary" else F.mse_loss(out, y))
    return total
