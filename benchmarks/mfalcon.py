"""M-FALCON vs one pass per candidate: time to rank m candidates for one user.

    python benchmarks/mfalcon.py                      # the committed table (CPU, 2 threads, fp32)
    python benchmarks/mfalcon.py --device cuda        # the same on a GPU

Three ways to get the ranking head's output for m candidates after one history (all give the same
scores; tests/models/test_generative.py checks M-FALCON against one-by-one to 1e-5):

- ``one_by_one``: a full causal pass over history + candidate, once per candidate (batch 1);
- ``naive_batched``: the same m sequences, ``--naive-batch`` at a time;
- ``m_falcon``: the history encoded once (KV cache), candidates in micro-batches of ``--micro-batch``,
  each seeing the history and itself.

Model: HSTU with interleaved item/action tokens (ranking model of genrec), random weights (speed does
not depend on them). Times are medians over ``--repeats`` runs, measured side by side in one process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from genrec.models import HSTU, HSTUConfig
from genrec.models.generative import GenerativeRecommender, HeadConfig


def timed(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--history", type=int, default=200, help="history interactions (2 tokens each)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--ms", type=int, nargs="+", default=[10, 100, 1000, 10_000])
    p.add_argument("--one-by-one-max", type=int, default=1000, help="largest m timed one pass per candidate")
    p.add_argument("--micro-batch", type=int, default=1024)
    p.add_argument("--naive-batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    L = 2 * args.history + 1
    backbone = HSTU(HSTUConfig(num_items=args.items, max_seq_len=L, embedding_dim=args.dim, num_layers=args.layers, num_heads=args.heads))
    model = GenerativeRecommender(backbone, HeadConfig()).to(args.device).eval()
    dev = args.device
    items = torch.randint(1, args.items + 1, (1, args.history), device=dev)
    labels = torch.randint(0, 2, (1, args.history, 1), device=dev).float()
    ts = torch.cumsum(torch.randint(1, 10_000, (1, args.history), device=dev), 1)
    qt = ts[:, -1] + 60

    def naive(cands: torch.Tensor) -> torch.Tensor:
        out = []
        for s in range(0, cands.size(1), args.naive_batch):
            c = cands[0, s : s + args.naive_batch]
            n = c.numel()
            out.append(model.rank_pass(items.expand(n, -1), labels.expand(n, -1, -1), c, ts.expand(n, -1), qt.expand(n)))
        return torch.cat(out)

    print(f"# device {dev}, {args.threads} threads, fp32; HSTU {args.layers} layers, D {args.dim}, {args.heads} heads; "
          f"history {args.history} interactions = {2 * args.history} tokens; M-FALCON micro-batch {args.micro_batch}, naive batch {args.naive_batch}")
    print("| m | M-FALCON s | naive batched s | one pass per candidate s | naive / M-FALCON | one-by-one / M-FALCON |")
    print("|---|---|---|---|---|---|")
    with torch.no_grad():
        for m in args.ms:
            cands = torch.randint(1, args.items + 1, (1, m), device=dev)
            t_mf = timed(lambda: model.rank(items, labels, cands, ts, qt, micro_batch=args.micro_batch), args.repeats, dev)
            t_nb = timed(lambda: naive(cands), max(1, args.repeats - 2) if m >= 10_000 else args.repeats, dev)
            t_ob = None
            if m <= args.one_by_one_max:
                t_ob = timed(lambda: [model.rank_pass(items, labels, cands[:, c], ts, qt) for c in range(m)], 1, dev)
            ob = f"{t_ob:.3f}" if t_ob is not None else "not run"
            ratio = f"{t_ob / t_mf:.0f}x" if t_ob is not None else "—"
            print(f"| {m} | {t_mf:.4f} | {t_nb:.3f} | {ob} | {t_nb / t_mf:.1f}x | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
