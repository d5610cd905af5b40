"""ANN quality and speed: recall@k and per-query latency of each FAISS index (flat, IVF, HNSW) against
exact search, on a checkpoint's own catalogue and on a synthetic large one.

    pip install 'genrec[serve]'
    GENREC_SOURCE=../shared/data python benchmarks/ann.py runs/beauty-hstu/best --synthetic 1000000 \\
        --out benchmarks/ann.json                                         # Beauty + 1M items
    python benchmarks/ann.py CKPT --synthetic 20000 --queries 50 --nprobe 8 --ef-search 32 --refine 10   # smoke test

Query vectors are real: the checkpoint's model on real user histories (each user's training
sequence from the prepared data, when ``$GENREC_SOURCE`` / the cache can provide it; otherwise
random histories over the catalogue, said on stderr). Catalogues: (1) the checkpoint's item vectors
(``Recommender.item_vectors``, what ``genrec serve`` indexes); (2) ``--synthetic N`` random item
vectors of the model's width, L2-normalised when the model's are, queried with the same real query
vectors, in one or both ``--synthetic-shape``: ``isotropic`` (standard Gaussian: no direction
preferred, the worst case for any partitioning index) and ``fitted`` (Gaussian with the real item
vectors' mean and covariance: the catalogue's spread over directions, none of its clusters).

Exact search = ``torch`` matmul + top-k over the whole catalogue in chunks (what ``--index exact``
does). Latency = one query at a time (what a lone request costs), ``--threads`` threads for torch
and FAISS alike (default 1), after a warm-up; mean and p50/p99 in ms. Recall@k = |ANN top-k ∩ exact
top-k| / k, averaged over queries. Speed-up = exact mean latency / index mean latency. IVF uses
nlist = 4·√N lists (trained on the catalogue) and is measured at each ``--nprobe``; HNSW uses
``--hnsw-m`` links and ``--ef-construction`` and is measured at each ``--ef-search``. PQ
(``genrec serve --index faiss-pq``) scans every item's 4-bit product-quantised code (``--pq-m``
sub-quantisers, default half the width) with FAISS's fast-scan kernels and re-scores the best
``--refine``·k exactly; it is measured at each ``--refine``. Build seconds are reported per index
(HNSW over 1M vectors takes minutes on 2 cores).

Target at 1M items: recall@10 >= 0.95 at >= 10x the exact search's speed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch


def real_queries(checkpoint: str, n: int, seed: int = 0) -> tuple:
    """([n, D] query vectors of real histories, or of random ones when the data is not at hand;
    the Recommender; where the histories came from)."""
    from genrec import Recommender

    rec = Recommender.load(checkpoint)
    rng = random.Random(seed)
    histories, source = _user_histories(rec), "users' training sequences (last two items held out)"
    if not histories:
        source = "random histories (the prepared data was not found)"
        print(f"ann: {source}", file=sys.stderr)
        for _ in range(n):
            length = rng.randint(1, rec.model.max_history)
            histories.append(([rng.choice(rec.item_ids) for _ in range(length)], None))
    picked = [histories[i] for i in rng.sample(range(len(histories)), min(n, len(histories)))]
    queries = []
    for items, times in picked:
        items = items[-rec.model.max_history :]
        times = times[-len(items) :] if times else [1_300_000_000 + 3600 * i for i in range(len(items))]
        feedback = [[1.0] * len(rec.task_names)] * len(items) if rec.reads_feedback else None
        queries.append(rec.query(items, times, feedback=feedback))
    vecs = torch.cat([rec.query_vectors(queries[i : i + 256]) for i in range(0, len(queries), 256)])
    return vecs.float().contiguous(), rec, source


def _user_histories(rec) -> list[tuple[list[str], list[int] | None]]:
    """Each user's sequence without its last two items (the validation and test targets), as raw
    ids with timestamps; [] when the checkpoint's prepared data cannot be read here."""
    try:
        from genrec.config import experiment_from_dict
        from genrec.data.prepare import load_prepared, prepare

        data = load_prepared(prepare(experiment_from_dict(rec.experiment, []).data))
    except Exception as exc:  # noqa: BLE001 - any failure means "no real histories here"
        print(f"ann: could not read the prepared data ({type(exc).__name__}: {str(exc)[:200]})", file=sys.stderr)
        return []
    out = []
    for u in range(data.num_users):
        a, b = int(data.offsets[u]), int(data.offsets[u + 1]) - 2
        if b > a:
            times = None if data.timestamps is None else data.timestamps[a:b].tolist()
            out.append(([str(data.item_ids[i - 1]) for i in data.items[a:b]], times))
    return out


def synthetic_items(real: torch.Tensor, n: int, shape: str, seed: int) -> torch.Tensor:
    """[n, D] random item vectors: standard Gaussian (``isotropic``), or Gaussian with the mean and
    covariance of ``real`` [N, D] (``fitted``; a small ridge keeps the factorisation defined)."""
    gen = torch.Generator().manual_seed(seed)
    if shape == "isotropic":  # float32, fitted float64: each as its committed rows drew it
        return torch.randn(n, real.size(1), generator=gen)
    z = torch.randn(n, real.size(1), generator=gen, dtype=torch.float64)
    x = real.double()
    cov = torch.cov(x.T) + 1e-6 * torch.eye(x.size(1), dtype=torch.float64)
    return (x.mean(0) + z @ torch.linalg.cholesky(cov).T).float()


def exact_topk(items: torch.Tensor, q: torch.Tensor, k: int, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of queries q [B, D] over items [N, D] in chunks -> (scores, ids) [B, k]."""
    best_s = q.new_full((q.size(0), 0), float("-inf"))
    best_i = torch.zeros((q.size(0), 0), dtype=torch.long)
    for start in range(0, items.size(0), chunk):
        s = q @ items[start : start + chunk].T  # [B C]
        s_top, i_top = s.topk(min(k, s.size(1)), dim=1)
        best_s, order = torch.cat([best_s, s_top], 1).topk(min(k, best_s.size(1) + s_top.size(1)), dim=1)
        best_i = torch.cat([best_i, i_top + start], 1).gather(1, order)
    return best_s, best_i


def timed(search, queries: np.ndarray, warmup: int = 10) -> tuple[list[np.ndarray], dict]:
    """Run ``search`` on one query at a time; (results, latency stats in ms)."""
    for q in queries[:warmup]:
        search(q[None])
    out, lat = [], []
    for q in queries:
        t = time.perf_counter()
        out.append(search(q[None]))
        lat.append((time.perf_counter() - t) * 1000)
    lat = np.array(lat)
    return out, {"mean_ms": round(float(lat.mean()), 4), "p50_ms": round(float(np.percentile(lat, 50)), 4),
                 "p99_ms": round(float(np.percentile(lat, 99)), 4)}


def recall(found: list[np.ndarray], truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f.ravel()[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def bench_catalogue(name: str, items: torch.Tensor, queries: torch.Tensor, args) -> list[dict]:
    import faiss

    N, D = items.shape
    k = args.k
    x, q = items.numpy(), queries.numpy()
    truth = exact_topk(items, queries, k)[1].numpy()
    _, exact_lat = timed(lambda v: exact_topk(items, torch.from_numpy(v), k)[1], q)
    rows = [{"catalogue": name, "items": N, "dim": D, "index": "exact", "params": "", "build_s": 0.0,
             f"recall@{k}": 1.0, **exact_lat, "speedup": 1.0}]
    print(json.dumps(rows[-1]), flush=True)

    def add(index_name: str, params: str, build_s: float, search) -> None:
        found, lat = timed(search, q)
        rows.append({"catalogue": name, "items": N, "dim": D, "index": index_name, "params": params,
                     "build_s": round(build_s, 2), f"recall@{k}": round(recall(found, truth, k), 4), **lat,
                     "speedup": round(exact_lat["mean_ms"] / lat["mean_ms"], 2)})
        print(json.dumps(rows[-1]), flush=True)

    t = time.perf_counter()
    flat = faiss.IndexFlatIP(D)  # always: the FAISS kernels' exact baseline
    flat.add(x)
    add("faiss-flat", "", time.perf_counter() - t, lambda v: flat.search(v, k)[1])

    if "ivf" in args.indexes:
        bench_ivf(faiss, x, k, args, add)
    if "hnsw" in args.indexes:
        bench_hnsw(faiss, x, k, args, add)
    if "pq" in args.indexes:
        bench_pq(faiss, x, k, args, add)
    return rows


def bench_ivf(faiss, x: np.ndarray, k: int, args, add) -> None:
    N, D = x.shape
    nlist = max(1, min(int(4 * N**0.5), N // 39))
    t = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(D), D, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(x)
    ivf.add(x)
    build = time.perf_counter() - t
    for nprobe in sorted({min(n, nlist) for n in args.nprobe}):
        p = faiss.SearchParametersIVF(nprobe=nprobe)
        add("faiss-ivf", f"nlist={nlist} nprobe={nprobe}", build, lambda v, p=p: ivf.search(v, k, params=p)[1])


def bench_hnsw(faiss, x: np.ndarray, k: int, args, add) -> None:
    D = x.shape[1]
    t = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(D, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = args.ef_construction
    hnsw.add(x)
    build = time.perf_counter() - t
    for ef in args.ef_search:
        p = faiss.SearchParametersHNSW(efSearch=max(ef, k))
        add("faiss-hnsw", f"M={args.hnsw_m} efC={args.ef_construction} ef={max(ef, k)}", build,
            lambda v, p=p: hnsw.search(v, k, params=p)[1])


def bench_pq(faiss, x: np.ndarray, k: int, args, add) -> None:
    D = x.shape[1]
    m = args.pq_m or (D // 2 if D % 2 == 0 else D)  # genrec serve's faiss-pq default
    t = time.perf_counter()
    pq = faiss.index_factory(D, f"PQ{m}x4fs,RFlat", faiss.METRIC_INNER_PRODUCT)
    pq.train(x)
    pq.add(x)
    build = time.perf_counter() - t
    for refine in args.refine:
        p = faiss.IndexRefineSearchParameters(k_factor=float(refine))
        add("faiss-pq", f"M={m}x4bit refine={refine}", build, lambda v, p=p: pq.search(v, k, params=p)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--synthetic", type=int, default=1_000_000, help="items of the synthetic catalogue (0: skip it)")
    ap.add_argument("--synthetic-shape", nargs="+", choices=["isotropic", "fitted"], default=["isotropic", "fitted"],
                    help="how the synthetic item vectors are drawn (see above)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--indexes", nargs="+", choices=["ivf", "hnsw", "pq"], default=["ivf", "hnsw", "pq"],
                    help="approximate indexes to measure (exact and faiss-flat always run, as the baseline)")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--pq-m", type=int, default=0, help="faiss-pq sub-quantisers (0: half the width, as genrec serve)")
    ap.add_argument("--refine", type=int, nargs="+", default=[10, 25, 50, 100],
                    help="faiss-pq: candidates re-scored exactly, times k")
    ap.add_argument("--threads", type=int, default=1, help="torch and FAISS threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()

    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    queries, rec, source = real_queries(args.checkpoint, args.queries, args.seed)
    items = rec.item_vectors().float().contiguous()
    cosine = bool(torch.allclose(items.norm(dim=1), torch.ones(items.size(0)), atol=1e-3))
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "queries": queries.size(0), "query_source": source,
              "threads": args.threads, "rows": bench_catalogue(f"{Path(args.checkpoint).parent.name} items", items, queries, args)}
    for shape in args.synthetic_shape if args.synthetic else []:
        synth = synthetic_items(items, args.synthetic, shape, args.seed)
        if cosine:
            synth = torch.nn.functional.normalize(synth, dim=1)
        result["rows"] += bench_catalogue(f"synthetic {args.synthetic} ({shape})", synth.contiguous(), queries, args)
    print_table(result["rows"], args.k)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def print_table(rows: list[dict], k: int) -> None:
    print(f"\n| catalogue | index | params | build s | recall@{k} | mean ms | p99 ms | speed-up vs exact |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['catalogue']} | {r['index']} | {r['params']} | {r['build_s']} | {r[f'recall@{k}']} | "
              f"{r['mean_ms']} | {r['p99_ms']} | {r['speedup']} |")


if __name__ == "__main__":
    main()
