"""UniGRF's ranking-driven enhancer: the ranking head shapes the retrieval loss (PAPERS.md §2).

Per retrieval position (an action token predicting the next item):

1. pool: the retrieval side's top ``candidate_pool`` items (the target excluded), over the whole
   catalogue or over ``pool_sample`` shared uniform items;
2. the ranking head scores each pool item as if it were the next item (M-FALCON over positions,
   :meth:`GenerativeRecommender.next_slot_outputs`), detached: no gradient flows through it;
3. (a) hard negatives: the ``hard_negatives`` pool items with the lowest ranking probability
   (retrieved high, ranked low) join the sampled negatives;
   (b) potential positives: pool items with ranking probability > α are taken out of the
   negatives (``remove``) or counted as extra positives (``relabel``).

Choices the paper leaves open and that are options here: the pool, m, α, the mode, the warm-up
(``task.enhancer_warmup_epochs``) and which binary task's probability is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genrec.models.generative import GenerativeRecommender, Interleaved


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
    detached = Interleaved(enc.hidden.detach(), [(k.detach(), v.detach()) for k, v in enc.cache], enc.lengths, enc.token_times, enc.request_time)
    probs = torch.sigmoid(model.next_slot_outputs(detached, pool, item_times)[..., task_index].float())  # [B n-1 P]
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
