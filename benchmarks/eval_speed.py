"""Full-catalogue evaluation: the ranking loop of ``genrec.evaluation.evaluator.target_ranks``
against the masked loop it replaced (commit 304861f), on one checkpoint's validation split.

    GENREC_SOURCE=../shared/data python benchmarks/eval_speed.py runs/beauty-hstu/best --rounds 5

Both loops rank the same batches with the same user vectors; each round times every batch under
both, alternating which goes first, and the ranks must agree exactly. Prints seconds per pass
(median over rounds) and the ratio. One thread unless ``--threads``. Time it on an otherwise idle
machine, and read the ratio, not the absolute times.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from genrec.checkpoint import load_model
from genrec.config import ExperimentConfig
from genrec.data.batches import eval_batches
from genrec.data.behaviours import with_behaviours
from genrec.data.prepare import load_prepared, prepare
from genrec.evaluation.evaluator import target_ranks


def item_mask(shape: torch.Size, items: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """[B, C] bool: True at the columns of the item ids in ``items`` [B, E] (ids start..end-1 map
    to columns 0..C-1; id 0 is padding)."""
    cols = items - start
    keep = (items >= start) & (items < end) & (items != 0)
    cols = torch.where(keep, cols, torch.zeros_like(cols))
    hits = torch.zeros(shape, dtype=torch.int32, device=items.device)
    hits.scatter_add_(1, cols, keep.to(torch.int32))  # duplicates add up; no write races
    return hits > 0


@torch.no_grad()
def masked_ranks(model, batch, item_chunk_size: int) -> torch.Tensor:
    """The loop before: every [B, C] block masked for non-finite scores, excluded items, the
    target and (multi-domain) the item range, then counted."""
    users = {} if batch.user_tokens is None else {"user_tokens": batch.user_tokens}
    user = model.user_vectors(batch.items, batch.timestamps, batch.query_time, batch.labels, batch.behaviours, **users).float()
    targets = batch.targets
    tgt = model.score_candidates(user, targets.unsqueeze(1)).float()
    tgt = tgt.masked_fill(~torch.isfinite(tgt), float("-inf"))
    ahead = torch.zeros(user.size(0), dtype=torch.long)
    rows = torch.arange(user.size(0))
    for start in range(1, model.config.num_items + 1, item_chunk_size):
        end = min(start + item_chunk_size, model.config.num_items + 1)
        s = model.score_items(user, start, end).float()
        bad = ~torch.isfinite(s)
        int(bad.sum())  # the old loop's non-finite count: it cost a pass and a sync, kept for a fair timing
        s.masked_fill_(bad, float("-inf"))
        before = s >= tgt
        before.masked_fill_(item_mask(s.shape, batch.exclude, start, end), False)
        if batch.item_range is not None:
            ids = torch.arange(start, end)
            before &= (ids >= batch.item_range[:, :1]) & (ids < batch.item_range[:, 1:])
        inside = (targets >= start) & (targets < end)
        before[rows[inside], targets[inside] - start] = False
        ahead += before.sum(1)
    ranks = ahead.double()
    ranks[(batch.exclude == targets.unsqueeze(1)).any(1)] = math.inf
    return ranks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, _, experiment = load_model(args.checkpoint)
    cfg = ExperimentConfig.from_dict(experiment)
    data = with_behaviours(load_prepared(prepare(cfg.data)), cfg.data)  # behaviour ids (multi-behaviour, multi-domain)
    model.eval()
    ev = cfg.eval
    batches = list(eval_batches(data, "valid", model.max_history, ev.batch_size, ev.exclude_history, ev.query_time, ev.holdout, None))
    loops = {"masked (before)": lambda b: masked_ranks(model, b, ev.item_chunk_size),
             "gather (now)": lambda b: target_ranks(model, b, ev.item_chunk_size)}
    times: dict[str, list[float]] = {k: [] for k in loops}
    for r in range(args.rounds):
        spent = dict.fromkeys(loops, 0.0)
        for i, b in enumerate(batches):
            order = list(loops) if (r + i) % 2 == 0 else list(loops)[::-1]
            out = {}
            for name in order:
                t0 = time.perf_counter()
                out[name] = loops[name](b)
                spent[name] += time.perf_counter() - t0
            a, c = out.values()
            if not torch.equal(a, c):
                raise SystemExit(f"the loops disagree on batch {i}: {a.tolist()} vs {c.tolist()}")
        for k in loops:
            times[k].append(spent[k])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.checkpoint}: valid split, {sum(len(b.targets) for b in batches)} users, {model.config.num_items} items, "
          f"batch {ev.batch_size}, chunk {ev.item_chunk_size}, {args.threads} thread(s), {args.rounds} rounds (median; user vectors included)")
    for k, v in med.items():
        print(f"  {k}: {v:.2f} s per pass")
    print(f"  ratio masked / gather: {med['masked (before)'] / med['gather (now)']:.2f}x")


if __name__ == "__main__":
    main()
