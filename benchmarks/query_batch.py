"""Batched query vectors (what the serving micro-batcher runs): one padded pass vs passes of
similar lengths, and the padding-free per-token work, side by side in one process.

    python benchmarks/query_batch.py runs/beauty-hstu/best                 # the committed table
    python benchmarks/query_batch.py runs/beauty-hstu/best --sizes 16 32 --rounds 8

For each batch size B: ``--batches`` batches of B histories of 1..``--max-len`` random known items
(fixed seed), each timed through ``Recommender.query_vectors`` in four settings, interleaved
batch by batch so the machine's noise hits all alike (all but ``every_token`` run the final layer
at each row's last item only, as shipped):

- ``dense``: one pass, and every token's per-token work (norms, projections) done on the padded
  [B, N] layout (``Context.token_rows`` switched off for this setting only);
- ``one_pass``: one pass, per-token work on the real tokens only (``cpu_cells_per_pass = None``);
- ``every_token``: as ``passes``, with the final layer run at every token and read at the last
  item (the generic form of ``SequentialRecommender.transduce_at``: how every pass ran before
  the backbones ran their final layer at each row's last item only);
- ``passes``: the shipped default, rows sorted by length into passes of at most
  ``Recommender.cpu_cells_per_pass`` attention cells, the final layer at the last items only.

Medians of the per-batch times, in ms, and ratios against ``dense`` (and ``passes`` against
``every_token``). Then evaluation's path: ``model.user_vectors`` on one right-padded batch of
``--eval-batch`` random histories (as ``genrec eval`` feeds it, no passes), every-token final layer
against the shipped one, interleaved. Also the zeroing of the
causal upper triangle in the attention scores: broadcast ``masked_fill_`` (before) vs ``tril_``.
1 torch thread (as ``genrec serve`` runs), CPU, inference mode.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from unittest import mock

import torch

from genrec import Recommender
from genrec.models.base import SequentialRecommender
from genrec.models.ops import Context, causal_mask


def _median_us(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--batches", type=int, default=40, help="distinct batches per size")
    p.add_argument("--rounds", type=int, default=4, help="times each batch is timed per setting")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-batch", type=int, default=256, help="rows of the evaluation-path batch (0: skip it)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rec = Recommender.load(args.checkpoint)
    default = rec.cpu_cells_per_pass
    rng = random.Random(0)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); "
          f"checkpoint {args.checkpoint}; histories of 1..{args.max_len} items; cpu_cells_per_pass={default}")

    def dense(queries):
        rec.cpu_cells_per_pass = None
        with mock.patch.object(Context, "token_rows", lambda self: None):
            return rec.query_vectors(queries)

    def one_pass(queries):
        rec.cpu_cells_per_pass = None
        return rec.query_vectors(queries)

    def passes(queries):
        rec.cpu_cells_per_pass = default
        return rec.query_vectors(queries)

    def every_token(queries):
        with mock.patch.object(SequentialRecommender, "reads_at", lambda self, ctx: False):
            return passes(queries)

    def request(n: int):  # n random known items, an hour apart when the model reads timestamps
        history = [rng.choice(rec.item_ids) for _ in range(n)]
        return rec.query(history, [1_700_000_000 + 3600 * t for t in range(n)] if rec.model.uses_timestamps else None)

    settings = {"dense": dense, "one_pass": one_pass, "every_token": every_token, "passes": passes}
    print("\n| B | dense ms | one_pass ms | every_token ms | passes ms | one_pass speed-up | passes speed-up | passes speed-up over every_token |"
          "\n|---|---|---|---|---|---|---|---|")
    for B in args.sizes:
        batches = [[request(rng.randint(1, args.max_len)) for _ in range(B)] for _ in range(args.batches)]
        for queries in batches[:2]:  # warm-up, and the settings agree
            want = dense(queries)
            for fn in (one_pass, every_token, passes):
                torch.testing.assert_close(fn(queries), want, atol=1e-5, rtol=1e-4)
        times: dict[str, list[float]] = {k: [] for k in settings}
        for _ in range(args.rounds):
            for queries in batches:
                for name, fn in settings.items():
                    start = time.perf_counter()
                    fn(queries)
                    times[name].append(time.perf_counter() - start)
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        print(f"| {B} | {med['dense']:.2f} | {med['one_pass']:.2f} | {med['every_token']:.2f} | {med['passes']:.2f} | "
              f"{med['dense'] / med['one_pass']:.2f}x | {med['dense'] / med['passes']:.2f}x | "
              f"{med['every_token'] / med['passes']:.2f}x |")
    rec.cpu_cells_per_pass = default

    if args.eval_batch and not (rec.reads_feedback or rec.reads_behaviours or rec.reads_user_attributes):
        eval_path(rec, args.eval_batch, args.max_len, args.rounds)
    elif args.eval_batch:
        print("\nevaluation path skipped: this checkpoint reads feedback, behaviours or user attributes")

    heads = rec.model.config.num_heads
    scores = torch.randn(32, heads, args.max_len, args.max_len)
    drop = ~causal_mask(args.max_len, scores.device)
    fill = _median_us(lambda: scores.masked_fill_(drop, 0.0), 200)
    tril = _median_us(lambda: scores.tril_(), 200)
    print(f"\nzeroing the upper triangle of [32, {heads}, {args.max_len}, {args.max_len}] scores: masked_fill_ {fill:.0f} us, "
          f"tril_ {tril:.0f} us ({fill / tril:.1f}x)")


def eval_path(rec: Recommender, B: int, max_len: int, rounds: int) -> None:
    """model.user_vectors on one padded [B, max_len] batch of uniform random lengths (not a real
    split's, which are mostly short), under no_grad as the evaluator runs it: every-token final
    layer vs shipped."""
    model, g = rec.model, torch.Generator().manual_seed(0)
    lengths = torch.randint(1, max_len + 1, (B,), generator=g)
    items = torch.randint(1, model.num_items + 1, (B, max_len), generator=g) * (torch.arange(max_len) < lengths.unsqueeze(1))
    ts = torch.cumsum(torch.full((B, max_len), 3600), 1) if model.uses_timestamps else None

    def shipped():
        with torch.no_grad():
            return model.user_vectors(items, ts)

    def every_token():
        with mock.patch.object(SequentialRecommender, "reads_at", lambda self, ctx: False):
            return shipped()

    torch.testing.assert_close(shipped(), every_token(), atol=1e-5, rtol=1e-4)
    times: dict[str, list[float]] = {"every_token": [], "shipped": []}
    for _ in range(5 * rounds):
        for name, fn in (("every_token", every_token), ("shipped", shipped)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(f"\nevaluation path, model.user_vectors on [{B}, {max_len}] (lengths 1..{max_len}): every_token {med['every_token']:.1f} ms, "
          f"shipped {med['shipped']:.1f} ms ({med['every_token'] / med['shipped']:.2f}x)")


if __name__ == "__main__":
    main()
