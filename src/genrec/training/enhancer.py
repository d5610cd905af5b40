"""UniGRF's ranking-driven enhancer: the ranking head shapes the retrieval loss (PAPERS.md §2).

Two pools (``task.enhancer_pool``):

- ``negatives`` (default; :func:`enhance_negatives`), the paper's description: the pool at a
  retrieval position is the ``candidate_pool`` negatives **of this step's sampled set** that the
  retrieval side scores highest (over-estimated by retrieval). The ranking head scores them
  (detached); (a) the ``hard_negatives`` it ranks lowest, where the two stages disagree most, join
  the loss once more as hard negatives (their logit counts twice in the softmax denominator);
  (b) those whose ranking probability exceeds α were wrongly labelled negative by the sampling and
  are taken out of the negatives (``remove``) or counted as positives (``relabel``). The candidate
  tokens' scoring pass runs without dropout (the cached history states are the training pass's).
  Only a random
  ``enhancer_rows`` fraction of the batch's sequences is examined per step (the rest train
  plainly), which bounds the cost: the ranking head's M-FALCON pass costs one candidate token per
  pool item and position.
- ``catalogue`` (genrec's first design; :func:`enhance`): the pool is the retrieval side's top
  items over the whole catalogue (or ``pool_sample`` uniform items), scored as below; potential
  positives need not be among the sampled negatives.

Per retrieval position (an action token predicting the next item), the ``catalogue`` pool:

1. pool: the retrieval side's top ``candidate_pool`` items (the target excluded), over the whole
   catalogue or over ``pool_sample`` shared uniform items;
2. the ranking head scores each pool item as if it were the next item (M-FALCON over positions,
   :meth:`GenerativeRecommender.next_slot_outputs`), detached: no gradient flows through it;
3. (a) hard negatives: the ``hard_negatives`` pool items with the lowest ranking probability
   (retrieved high, ranked low) join the sampled negatives;
   (b) potential positives: pool items with ranking probability > α are taken out of the
   negatives (``remove``) or counted as extra positives (``relabel``).

Choices the paper leaves open and that are options here: the pool, m, α, the mode, the warm-up
(``task.enhancer_warmup_epochs``), the fraction of sequences examined and which binary task's
probability is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genrec.models.generative import GenerativeRecommender, Interleaved
from genrec.training.logits import gathered_logits


@dataclass
class Enhancement:
    hard: torch.Tensor | None  # [T m] hard-negative item ids per retrieval position
    potential: torch.Tensor | None  # [T P] pool ids whose ranking probability > α (0 elsewhere)
    mode: str  # remove | relabel
    stats: dict


@torch.no_grad()
def enhance(
    model: GenerativeRecommender, enc: Interleaved, q: torch.Tensor, items: torch.Tensor, item_times, task_cfg, task_index: int
) -> Enhancement:
    """q [B, n-1, D] retrieval queries at action tokens 0..n-2 (targets items[:, 1:]);
    returns per-position extras for the positions with a target, flattened in row-major order."""
    B, n1, _ = q.shape
    targets = items[:, 1:]  # [B n-1]
    num_items, P = model.config.num_items, task_cfg.candidate_pool
    if task_cfg.pool_sample:
        ids = torch.randint(1, num_items + 1, (task_cfg.pool_sample,), device=q.device)
    else:
        ids = torch.arange(1, num_items + 1, device=q.device)
    scores = (q.float() @ model.item_vectors(ids).float().T)  # [B n-1 S]
    scores = scores.masked_fill(ids.view(1, 1, -1) == targets.unsqueeze(-1), float("-inf"))
    pool = ids[scores.topk(min(P, ids.numel()), dim=-1).indices]  # [B n-1 P]
    probs = torch.sigmoid(model.next_slot_outputs(_detached(enc), pool, item_times)[..., task_index].float())  # [B n-1 P]
    has = targets != 0
    pool, probs = pool[has], probs[has]  # [T P]
    hard = potential = None
    stats = {"pool_mean_ranking_prob": float(probs.mean()) if probs.numel() else 0.0}
    if task_cfg.hard_negatives:
        hard = pool.gather(1, probs.topk(task_cfg.hard_negatives, dim=1, largest=False).indices)  # [T m]
    if task_cfg.potential_positive_alpha > 0:
        is_pp = probs > task_cfg.potential_positive_alpha
        potential = torch.where(is_pp, pool, torch.zeros_like(pool))
        stats["potential_positives_per_position"] = float(is_pp.sum(1).double().mean()) if is_pp.numel() else 0.0
    return Enhancement(hard, potential, task_cfg.potential_positive_mode, stats)


@torch.no_grad()
def enhance_negatives(
    model: GenerativeRecommender, enc: Interleaved, q: torch.Tensor, items: torch.Tensor, item_times, task_cfg,
    task_index: int, negatives: torch.Tensor,
) -> Enhancement:
    """The ``negatives`` pool. q [B, n-1, D] retrieval queries at action tokens 0..n-2 (targets
    items[:, 1:]); negatives: this step's sampled negatives, [1, K] shared or [T, K] per target
    position (row-major over the positions with a target). Returns per-position extras for the
    positions with a target (row-major): ``hard`` [T, m] and ``potential`` [T, P], 0 where a
    position was not examined."""
    B, n1, _ = q.shape
    targets = items[:, 1:]  # [B n-1]
    has = targets != 0
    rows = torch.nonzero(torch.rand(B, device=q.device) < task_cfg.enhancer_rows).squeeze(1)  # examined sequences
    T, P, m = int(has.sum()), task_cfg.candidate_pool, task_cfg.hard_negatives
    hard = torch.zeros(T, m, dtype=torch.long, device=q.device) if m else None
    potential = torch.zeros(T, P, dtype=torch.long, device=q.device) if task_cfg.potential_positive_alpha > 0 else None
    stats = {"enhancer_rows": int(rows.numel())}
    if rows.numel() == 0:
        return Enhancement(hard, potential, task_cfg.potential_positive_mode, stats)
    # the examined positions with a target, row-major among the T positions: E of them
    where = torch.zeros(B, n1, dtype=torch.long, device=q.device)
    where[has] = torch.arange(1, T + 1, device=q.device)  # 1-based index into the T positions
    slot = where[rows]  # [R n-1] 0 = no target
    keep = slot > 0
    idx = slot[keep] - 1  # [E]
    qe, te = q[rows][keep].float(), targets[rows][keep]  # [E D], [E]
    if negatives.size(0) == 1:  # one set for the batch: one matmul
        cand = negatives.expand(idx.numel(), -1)  # [E K]
        scores = qe @ model.item_vectors(negatives[0]).float().T  # retrieval scores of the negatives
    else:  # per position, by blocks (never [E K D])
        cand = negatives[idx]
        scores = gathered_logits(qe, model.item_vectors, cand, model.config.num_items).float()
    scores = scores.masked_fill(cand == te.unsqueeze(1), float("-inf"))  # accidental hits never enter the pool
    top = scores.topk(min(P, cand.size(1)), dim=1)
    pool_e, valid_e = cand.gather(1, top.indices), torch.isfinite(top.values)  # [E P] the negatives retrieval over-scores
    pool = torch.zeros(rows.numel(), n1, pool_e.size(1), dtype=pool_e.dtype, device=q.device)  # 0 (padding) elsewhere
    pool[keep] = pool_e
    sub = _detached(enc, rows)
    was_training = model.training
    model.eval()  # the candidate tokens' pass without dropout (the cached history states are the training pass's)
    try:
        out = model.next_slot_outputs(sub, pool, None if item_times is None else item_times[rows])  # [R n-1 P A]
    finally:
        model.train(was_training)
    probs_e = torch.sigmoid(out[..., task_index].float())[keep].masked_fill(~valid_e, float("nan"))  # [E P]
    stats["pool_mean_ranking_prob"] = float(probs_e[valid_e].mean()) if bool(valid_e.any()) else 0.0
    if hard is not None:
        low = probs_e.masked_fill(~valid_e, float("inf")).topk(min(m, pool_e.size(1)), dim=1, largest=False)
        picked = pool_e.gather(1, low.indices).masked_fill(~torch.isfinite(low.values), 0)
        hard[idx, : picked.size(1)] = picked
    if potential is not None:
        is_pp = valid_e & (probs_e > task_cfg.potential_positive_alpha)
        potential[idx, : pool_e.size(1)] = torch.where(is_pp, pool_e, torch.zeros_like(pool_e))
        stats["potential_positives_per_position"] = float(is_pp.sum(1).double().mean()) if is_pp.numel() else 0.0
    return Enhancement(hard, potential, task_cfg.potential_positive_mode, stats)


def _detached(enc: Interleaved, rows: torch.Tensor | None = None) -> Interleaved:
    """``enc`` (its ``rows`` only, when given) cut from the autograd graph: the enhancer's scoring
    pass reads the history's states without training through them."""
    def pick(t: torch.Tensor | None) -> torch.Tensor | None:
        return t if t is None or rows is None else t[rows]

    return Interleaved(pick(enc.hidden).detach(), [(pick(k).detach(), pick(v).detach()) for k, v in enc.cache], pick(enc.lengths),
                       pick(enc.token_times), pick(enc.request_time))
