"""HSTU pointwise attention vs PyTorch softmax attention (scaled_dot_product_attention) of the
same width, forward + backward, causal, at lengths 50 ... 4096.

    python benchmarks/attention.py [--lengths 50 128 ... 4096] [--tokens 8192] [--dtypes fp32 bf16]

Per length: batch = max(1, tokens // N) sequences of N tokens, 2 heads of 64 (width 128). HSTU
runs with its learned relative position bias built inside the timed call exactly as the model
does (``RelativeBias.causal_block``: rows built per block, Toeplitz gradient); SDPA without one (its best case).
``hstu`` is genrec's dispatcher (blocked causal kernel past 256 tokens); ``hstu dense`` is the
pure-PyTorch reference that materialises the full N x N scores. Each cell: median of --reps
timed runs after one warm-up, in ms. ``ratio`` = hstu / sdpa (< 1: HSTU is faster).
Run alone on an idle machine; compare within one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from genrec.models.ops import RelativeBias, hstu_attention, hstu_attention_reference


def _time(fn, reps: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return statistics.median(out) * 1000


def bench(N: int, tokens: int, dtype: torch.dtype, reps: int) -> dict:
    B, H, d = max(1, tokens // N), 2, 64
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, N, d, generator=g).to(dtype).requires_grad_() for _ in range(3))
    rel = RelativeBias(N, position=True, time=False, num_buckets=128, divisor=0.301).to(dtype)

    def hstu(fn):
        def run():
            bias = rel.causal_block if fn is hstu_attention else rel.causal_block(0, N)  # as HSTULayer passes it
            out = fn(q, k, v, bias, float(N))
            out.sum().backward()
        return run

    def sdpa():
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    row = {"N": N, "B": B, "sdpa": _time(sdpa, reps), "hstu": _time(hstu(hstu_attention), reps)}
    row["hstu_dense"] = _time(hstu(hstu_attention_reference), reps) if N <= 2048 else float("nan")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[50, 128, 256, 512, 1024, 2048, 4096])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| dtype | N | batch | sdpa ms | hstu ms | hstu dense ms | ratio hstu/sdpa |\n|---|---|---|---|---|---|---|")
    for name in args.dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        for N in args.lengths:
            r = bench(N, args.tokens, dtype, args.reps)
            print(f"| {name} | {N} | {r['B']} | {r['sdpa']:.1f} | {r['hstu']:.1f} | {r['hstu_dense']:.1f} | {r['hstu'] / r['sdpa']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
