"""Full-catalogue evaluation through the scoring contract, in bounded-memory chunks.

Rank of a target = number of other, non-excluded items scoring at least as high (ties count
against the model). A target that lies in the user's excluded set can never be ranked and counts
as a miss; how many did is reported.

Non-finite scores (NaN, ±inf: a corrupted checkpoint or a diverged model) rank last: such an item
is never ahead of a finite target, and a target with a non-finite score ranks behind every other
non-excluded item. How many scores and targets were non-finite is reported
(``nonfinite_scores``, ``nonfinite_targets``), and a warning is printed when any were.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable

import torch
from tqdm import tqdm

from genrec.data.batches import EvalBatch, eval_batches
from genrec.data.splits import domain_of_items, split_block, split_counts
from genrec.data.prepare import SequenceData
from genrec.evaluation.metrics import metrics_from_ranks
from genrec.models.base import SequentialRecommender


@torch.no_grad()
def target_ranks(
    model: SequentialRecommender, batch: EvalBatch, item_chunk_size: int = 8192, nonfinite: dict | None = None
) -> torch.Tensor:
    """[B] 0-based pessimistic rank of each target over the whole catalogue, or over its domain's
    items when ``batch.item_range`` is set (multi-domain data); inf if excluded.
    ``nonfinite``: a dict whose ``scores``/``targets`` counters are increased by the number of
    non-finite item scores and target scores met (they rank last, see the module docstring); with
    item ranges, only the items the batch's ranges span are scored, so only those are counted.

    Per chunk of items it counts the scores at or above the target's and then takes back, by a
    gather of B x E cells, the target itself and the excluded items that were counted, rather than
    masking the [B, C] block (the block is read twice: the comparison and its count)."""
    users = {} if batch.user_tokens is None else {"user_tokens": batch.user_tokens}  # (models without user features need not take it)
    user = model.user_vectors(batch.items, batch.timestamps, batch.query_time, batch.labels, batch.behaviours, **users).float()  # [B D]
    targets = batch.targets
    tgt = model.score_candidates(user, targets.unsqueeze(1)).float()  # [B 1]
    bad_tgt = ~torch.isfinite(tgt)
    tgt = tgt.masked_fill(bad_tgt, float("-inf"))  # a non-finite target: every other item is ahead
    # what a chunk's count takes back: the target, and each excluded item once (duplicates and the
    # target itself dropped; 0 = padding)
    taken = torch.cat([targets.unsqueeze(1), distinct_items(batch.exclude, targets)], 1)  # [B 1+E]
    ranged = batch.item_range is not None
    if ranged:  # multi-domain: only the target domain's catalogue is ranked
        lo, hi = batch.item_range[:, :1], batch.item_range[:, 1:]
        taken = torch.where((taken >= lo) & (taken < hi), taken, torch.zeros_like(taken))
        first, stop = int(lo.min()), int(hi.max())
    else:
        first, stop = 1, model.config.num_items + 1
    ahead = torch.zeros(user.size(0), dtype=torch.long, device=user.device)
    bad_scores = 0
    for start in range(first, stop, item_chunk_size):
        end = min(start + item_chunk_size, stop)
        s = model.score_items(user, start, end).float()  # [B C], a fresh tensor: updated in place below
        if not bool(torch.isfinite(s.sum())):  # some score is non-finite (or the sum overflowed): look cell by cell
            bad = ~torch.isfinite(s)
            bad_scores += int(bad.sum())
            s.masked_fill_(bad, float("-inf"))  # never ahead of a finite target
        before = s >= tgt  # [B C]
        if ranged:
            ids = torch.arange(start, end, device=s.device)
            before &= (ids >= lo) & (ids < hi)
        inside = (taken >= start) & (taken < end) & (taken != 0)
        counted = before.gather(1, torch.where(inside, taken - start, torch.zeros_like(taken))) & inside
        ahead += before.sum(1) - counted.sum(1)
    if nonfinite is not None:
        nonfinite["scores"] = nonfinite.get("scores", 0) + bad_scores
        nonfinite["targets"] = nonfinite.get("targets", 0) + int(bad_tgt.sum())
    ranks = ahead.double()
    ranks[(batch.exclude == targets.unsqueeze(1)).any(1)] = math.inf
    return ranks


def distinct_items(items: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """[B, E] item ids with each row's repeats and its ``drop`` [B] id replaced by 0 (padding)."""
    if items.size(1) == 0:
        return items
    ids = items.sort(1).values
    repeat = torch.zeros_like(ids, dtype=torch.bool)
    repeat[:, 1:] = ids[:, 1:] == ids[:, :-1]
    return ids.masked_fill(repeat | (ids == drop.unsqueeze(1)), 0)


def warn_nonfinite(nonfinite: dict, split: str) -> None:
    """Say on stderr that the model produced non-finite scores (they were ranked last)."""
    if nonfinite.get("scores") or nonfinite.get("targets"):
        print(f"genrec: warning: {split}: the model gave {nonfinite.get('scores', 0)} non-finite item scores and "
              f"{nonfinite.get('targets', 0)} non-finite target scores (NaN/inf: corrupted or diverged weights?); "
              "they were ranked last", file=sys.stderr)


def split_desc(split: str, holdout: int) -> str:
    if holdout == 1:
        return f"leave-one-out, {split} ({'second-to-last' if split == 'valid' else 'last'} item per user with >= 3 interactions)"
    which = "the K before the last K" if split == "valid" else "the last K"
    return (f"leave-last-K-out (K={holdout}), {split} = {which} interactions per user with >= {2 * holdout + 1}; "
            "retrieval target = the block's first item, history = everything before the block")


def protocol(data: SequenceData, split: str, eval_cfg, max_seq_len: int, num_users: int) -> dict:
    excluded = {
        "full": "all of the user's earlier items",
        "targets": "the user's earlier target-behaviour items",
        "input": f"the items of the model input (last {max_seq_len})",
        "none": "nothing",
    }[eval_cfg.exclude_history]
    split_text = split_desc(split, eval_cfg.holdout)
    beh = {}
    if data.behaviours is not None:
        beh["behaviours"] = data.behaviours.description
        if data.behaviours.targets is not None:
            which = "second-to-last" if split == "valid" else "last"
            kind = "own-domain" if data.stats.get("domains") else "target-behaviour"
            split_text = (f"leave-one-out over {kind} interactions, {split} ({which} {kind} interaction per row with "
                          ">= 3 of them; history = every earlier interaction the model reads)")
    if data.user_feature_stats:
        st = data.user_feature_stats
        beh["user_attributes"] = f"{st['source']}: {st['users_with_attributes']} of {st['users']} users have any"
    return {
        "split": split_text,
        **beh,
        "ranking": (f"full catalogue ({data.num_items} items), not sampled" if not data.stats.get("domains") else
                    "full catalogue of the target's domain ("
                    + ", ".join(f"{d['name']}: {d['end_item'] - d['first_item']} items" for d in data.stats["domains"])
                    + "), not sampled; metrics also per domain (<domain>/<metric>)"),
        "excluded_from_ranking": excluded + "; a target inside that set counts as a miss",
        "ties": "pessimistic (equal scores rank ahead of the target)",
        "nonfinite_scores": "NaN/inf scores rank last (counted in nonfinite_scores / nonfinite_targets)",
        "max_history": max_seq_len,
        "users": num_users,
        "time_bias_query_time": eval_cfg.query_time if data.timestamps is not None else "n/a (no timestamps)",
        **split_counts(data, eval_cfg.holdout),
    }


def progress(batches: Iterable, data: SequenceData, split: str, eval_cfg) -> Iterable:
    """``batches`` of ``split`` behind a progress bar on stderr (drawn only when stderr is a terminal)."""
    total = math.ceil(split_counts(data, eval_cfg.holdout)["eval_users"] / eval_cfg.batch_size)
    return tqdm(batches, total=total, desc=f"eval {split}", leave=False, dynamic_ncols=True, disable=None)


@torch.no_grad()
def split_ranks(
    model: SequentialRecommender, data: SequenceData, split: str, eval_cfg, device: torch.device | str = "cpu", labels=None,
    nonfinite: dict | None = None,
) -> torch.Tensor:
    """[users] rank of every evaluated user's ``split`` target (see :func:`target_ranks`), in the
    order of :func:`~genrec.data.batches.split_block` (ascending user index), whatever order the
    batches come in. ``labels`` [T, A]: per-interaction feedback, for models that read it."""
    if model.reads_user_attributes and list(model.config.user_attributes) != list(data.user_vocabulary):
        raise ValueError("this model reads user attributes, but the data's user attribute vocabulary differs from the one it was "
                         "trained with (a different data.user_features file?)" if data.user_tokens is not None else
                         "this model reads user attributes: evaluate it on data read with data.user_features")
    was_training = model.training
    model.eval()
    all_ranks, all_users = [], []
    nonfinite = {} if nonfinite is None else nonfinite
    batches = eval_batches(
        data, split, model.max_history, eval_cfg.batch_size, eval_cfg.exclude_history, eval_cfg.query_time, eval_cfg.holdout, labels
    )
    for batch in progress(batches, data, split, eval_cfg):
        batch = EvalBatch(*(None if t is None else t.to(device) for t in vars(batch).values()))
        all_ranks.append(target_ranks(model, batch, eval_cfg.item_chunk_size, nonfinite).cpu())
        all_users.append(batch.users.cpu())
    model.train(was_training)
    if not all_ranks:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat(all_ranks)[torch.argsort(torch.cat(all_users))]  # batches are sorted by length


def per_domain(ranks: torch.Tensor, data: SequenceData, split: str, eval_cfg) -> dict:
    """Multi-domain data: every metric again per target domain, as ``<domain>/<metric>`` (plus
    ``<domain>/users``); empty for single-domain data. ``ranks`` in split_block order."""
    if not data.stats.get("domains"):
        return {}
    _, target_pos = split_block(data, split, eval_cfg.holdout)
    domain = torch.from_numpy(domain_of_items(data, data.items[target_pos]))
    out = {}
    for d, info in enumerate(data.stats["domains"]):
        chosen = domain == d
        if bool(chosen.any()):
            out.update({f"{info['name']}/{k}": v for k, v in metrics_from_ranks(ranks[chosen], eval_cfg.ks).items()})
        out[f"{info['name']}/users"] = int(chosen.sum())
    return out


def evaluate(
    model: SequentialRecommender, data: SequenceData, split: str, eval_cfg, device: torch.device | str = "cpu", labels=None
) -> dict:
    """Metrics for ``split`` ("valid"/"test") with their protocol: {"metrics", "protocol"}."""
    nonfinite: dict = {}
    ranks = split_ranks(model, data, split, eval_cfg, device, labels, nonfinite)
    metrics = metrics_from_ranks(ranks, eval_cfg.ks)
    metrics["targets_in_excluded_history"] = int(torch.isinf(ranks).sum())
    metrics["nonfinite_scores"] = nonfinite.get("scores", 0)
    metrics["nonfinite_targets"] = nonfinite.get("targets", 0)
    metrics.update(per_domain(ranks, data, split, eval_cfg))
    warn_nonfinite(nonfinite, split)
    return {"metrics": metrics, "protocol": protocol(data, split, eval_cfg, model.max_history, len(ranks))}
