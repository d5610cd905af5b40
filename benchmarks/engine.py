"""Engine speed and memory: this tree's training step beside a pinned earlier commit's, in one run.

    GENREC_SOURCE=../shared/data python benchmarks/engine.py --rounds 2
    GENREC_SOURCE=../shared/data python benchmarks/engine.py --runs
    GENREC_SOURCE=../shared/data python benchmarks/engine.py --time-to-quality --target 0.05

Epochs mode (default): Beauty HSTU (``configs/beauty/hstu.yaml``, 1 thread, fp32) in three recipes,
each trained for one whole epoch (the trainer's own epoch loop, no evaluation) in a fresh process:

- ``matched``: the settings under which Meta's reference HSTU code was timed on this machine
  (512 uniform negatives drawn per position with accidental hits masked, padded batches of 128,
  temperature 0.05), the issue's "matched settings";
- ``shipped``: the config as shipped (256 negatives shared by the batch, length bucketing);
- ``full-softmax``: the shipped config with ``train.loss=full_softmax``;
- ``full-softmax-bf16``: the same with ``train.softmax_matmul=bf16`` (bf16 matmul operands in
  the loss; trees before that setting existed refuse it: run it with ``--baseline ''``).

Each recipe runs under this tree and under ``--baseline`` (default 651bf8c, the last commit
before the engine work), extracted with ``git archive`` and put first on ``PYTHONPATH``; the two
alternate (baseline, this, baseline, this, ...) for ``--rounds`` rounds so that drift in the
machine's load hits both alike. Per run: epoch seconds, training targets/s, user and system CPU
seconds of the epoch, peak RSS of the process (data, model and the epoch; no evaluation), and the
epoch's mean loss (the same recipe must give the same loss under both trees: the arithmetic is
exact, only float rounding differs). Summary: median epoch per recipe and tree, and the ratio.

Runs mode (``--runs``): whole ``genrec train`` runs of the shipped config for ``--run-epochs``
epochs (training, validation after every epoch, test) under both trees: wall seconds and peak
RSS of the process. Peak RSS of a training run includes evaluation.

Time-to-quality mode (``--time-to-quality``): this tree only, shipped and matched recipes,
validation NDCG@10 after every epoch (leave-one-out, full catalogue, history excluded) until it
reaches ``--target`` or ``--max-epochs``: epochs and wall seconds (training + validation) to get
there. Test data is never read.

Kernels mode (``--kernels``): the loss kernels alone, forward + backward, T=776 positions (a
Beauty batch), D=64, unit-norm vectors, 1 thread: per-position negatives as the baseline computed
them (normalise a [T, K, D] gather, einsum) and through :mod:`genrec.training.logits` (dense
matmul + pick, or blockwise gathered dot: the per-element costs behind ``DENSE_RATIO``); the full
softmax as the baseline (``F.cross_entropy`` over [T, items] logits), by blocks with the forward
blocks kept or recomputed (fp32 and bf16 matmul operands), and the floor of three [T x items x D]
fp32 matmuls.

Run alone on an idle machine; compare within one run (ratios), never across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "beauty" / "hstu.yaml"
COMMON = ["train.num_threads=1", "train.precision=fp32"]
RECIPES = {
    "matched": ["train.num_negatives=512", "train.negative_sharing=position", "train.bucket_by_length=false"],
    "shipped": [],
    "full-softmax": ["train.loss=full_softmax"],
    "full-softmax-bf16": ["train.loss=full_softmax", "train.softmax_matmul=bf16"],
}

EPOCH_CHILD = r"""
import json, resource, sys, tempfile, time
import genrec
from genrec.config import load_config
from genrec.data.prepare import load_prepared, prepare
from genrec.experiments.run import make_trainer
cfg = load_config(sys.argv[1], sys.argv[2:])
data = load_prepared(prepare(cfg.data))
with tempfile.TemporaryDirectory() as tmp:
    tr = make_trainer(cfg, tmp, data)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    rec = tr.train_epoch(0)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": rec["seconds"], "targets_per_s": rec["tokens_per_s"], "loss": rec["loss"],
                  "user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime,
                  "rss_mb": r1.ru_maxrss / 1024, "genrec": genrec.__file__}))
"""

QUALITY_CHILD = r"""
import json, resource, sys, tempfile, time
from genrec.config import load_config
from genrec.data.prepare import load_prepared, prepare
from genrec.experiments.run import make_trainer
target, max_epochs = float(sys.argv[1]), int(sys.argv[2])
cfg = load_config(sys.argv[3], sys.argv[4:])
data = load_prepared(prepare(cfg.data))
rows, start = [], time.perf_counter()
with tempfile.TemporaryDirectory() as tmp:
    tr = make_trainer(cfg, tmp, data)
    for epoch in range(max_epochs):
        rec = tr.train_epoch(epoch)
        ndcg = tr.evaluate("valid")["metrics"]["ndcg@10"]
        rows.append({"epoch": epoch + 1, "train_s": rec["seconds"], "valid_ndcg@10": ndcg, "wall_s": time.perf_counter() - start})
        if ndcg >= target:
            break
print(json.dumps({"curve": rows, "reached": rows[-1]["valid_ndcg@10"] >= target,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

RUN_CHILD = r"""
import resource, sys, time
from genrec.cli import main
start = time.perf_counter()
rc = main(sys.argv[1:])
print("ENGINE", time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rc)
"""


def extract(rev: str, dest: Path) -> Path:
    """The baseline's ``src/`` tree (``git archive rev src``) under dest."""
    archive = dest / "src.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, stdout=f, check=True)
    with tarfile.open(archive) as tar:  # our own repository's files; the safe filter where this Python has it
        tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return dest / "src"


def child(code: str, args: list[str], src: Path | None) -> str:
    env = dict(os.environ)
    if src is not None:  # the baseline's package ahead of the installed (this tree's) one
        env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({args}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def epochs(trees: dict[str, Path | None], rounds: int, recipes: list[str], extra: list[str]) -> None:
    print("| recipe | tree | round | epoch s | targets/s | user s | sys s | sys share | peak RSS MB | epoch loss |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    seconds: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        for recipe in recipes:
            for tree, src in trees.items():
                out = child(EPOCH_CHILD, [str(CONFIG), *COMMON, *RECIPES[recipe], *extra], src)
                res = json.loads(out.strip().splitlines()[-1])
                expected = str(src) if src is not None else str(ROOT / "src")
                if not res["genrec"].startswith(expected):
                    raise SystemExit(f"the {tree} run imported {res['genrec']}, not {expected}")
                seconds.setdefault((recipe, tree), []).append(res["seconds"])
                cpu = res["user_s"] + res["sys_s"]
                print(f"| {recipe} | {tree} | {r + 1} | {res['seconds']:.2f} | {res['targets_per_s']:.0f} | {res['user_s']:.1f} "
                      f"| {res['sys_s']:.1f} | {res['sys_s'] / cpu:.0%} | {res['rss_mb']:.0f} | {res['loss']:.4f} |", flush=True)
    print("\n| recipe | " + " | ".join(f"{t} median epoch s" for t in trees) + " | speed-up |\n|---|" + "---|" * (len(trees) + 1))
    names = list(trees)
    for recipe in recipes:
        med = [statistics.median(seconds[(recipe, t)]) for t in names]
        ratio = f"{med[0] / med[-1]:.2f}x" if len(med) > 1 else "-"
        print(f"| {recipe} | " + " | ".join(f"{m:.2f}" for m in med) + f" | {ratio} |")
    for full in ("full-softmax", "full-softmax-bf16"):
        if "shipped" in recipes and full in recipes:
            for t in names:
                print(f"{t}: {full} / shipped (256 shared negatives) = "
                      f"{statistics.median(seconds[(full, t)]) / statistics.median(seconds[('shipped', t)]):.2f}x")


def runs(trees: dict[str, Path | None], run_epochs: int, extra: list[str]) -> None:
    print("| tree | wall s | peak RSS MB |\n|---|---|---|")
    for tree, src in trees.items():
        with tempfile.TemporaryDirectory() as tmp:
            out = child(RUN_CHILD, ["train", str(CONFIG), *COMMON, f"train.epochs={run_epochs}", *extra, "--out", str(Path(tmp) / "run")], src)
        wall, rss, rc = next(line for line in out.splitlines() if line.startswith("ENGINE ")).split()[1:]
        print(f"| {tree} | {float(wall):.1f} | {float(rss):.0f} |", flush=True)


def time_to_quality(target: float, max_epochs: int, extra: list[str]) -> None:
    print(f"time to validation NDCG@10 >= {target} (this tree; leave-one-out, full catalogue, history excluded)\n")
    print("| recipe | reached | epochs | train s | wall s (train + validation) | last valid NDCG@10 | peak RSS MB |\n|---|---|---|---|---|---|---|")
    for recipe in ("shipped", "matched"):
        out = child(QUALITY_CHILD, [str(target), str(max_epochs), str(CONFIG), *COMMON, *RECIPES[recipe], *extra], None)
        res = json.loads(out.strip().splitlines()[-1])
        curve = res["curve"]
        print(f"| {recipe} | {'yes' if res['reached'] else 'no'} | {len(curve)} | {sum(c['train_s'] for c in curve):.0f} "
              f"| {curve[-1]['wall_s']:.0f} | {curve[-1]['valid_ndcg@10']:.4f} | {res['rss_mb']:.0f} |", flush=True)
        print("  valid NDCG@10 by epoch: " + ", ".join(f"{c['valid_ndcg@10']:.4f}" for c in curve), flush=True)


def kernels(reps: int) -> None:
    import time

    import torch
    import torch.nn.functional as F

    from genrec.training import logits as L

    torch.set_num_threads(1)
    T, D, tau = 776, 64, 0.05
    gen = torch.Generator().manual_seed(0)

    def timed(fn) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - start) / reps * 1000

    q = F.normalize(torch.randn(T, D, generator=gen), dim=-1).requires_grad_()
    print(f"torch {torch.__version__}, 1 thread, T={T}, D={D}; milliseconds per forward + backward (mean of {reps} runs after one warm-up)\n")
    print("| per-position negatives | items | K | baseline (gather + normalise + einsum) | dense matmul + pick | blockwise gathered dot | genrec picks | dense us/item | gathered us/negative | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for V, K in ((12101, 128), (12101, 512), (12101, 2048), (3000, 512), (50000, 512)):
        table = torch.randn(V + 1, D, generator=gen).requires_grad_()
        ids = torch.randint(1, V + 1, (T, K), generator=gen)

        def baseline():
            torch.einsum("td,tkd->tk", q, F.normalize(table[ids], dim=-1)).sum().backward()

        def through(fn):
            return lambda: fn.apply(q, F.normalize(table, dim=-1), ids).sum().backward()

        base, dense, gathered = timed(baseline), timed(through(L._DenseGather)), timed(through(L._GatheredDot))
        pick = "dense" if V + 1 <= L.DENSE_RATIO * K else "gathered"
        per_item, per_neg = dense / T / (V + 1) * 1000, gathered / T / K * 1000
        print(f"| | {V} | {K} | {base:.1f} | {dense:.1f} | {gathered:.1f} | {pick} | {per_item:.4f} | {per_neg:.4f} | {per_neg / per_item:.0f} |", flush=True)
    print("\n| full softmax | items | baseline (full logits) | blocks kept | blocks recomputed | bf16 blocks kept | bf16 blocks recomputed | 3-matmul floor |\n|---|---|---|---|---|---|---|---|")
    for V in (12101, 50000):
        table = F.normalize(torch.randn(V, D, generator=gen), dim=-1).requires_grad_()
        target = torch.randint(0, V, (T,), generator=gen)

        def baseline():
            F.cross_entropy((q @ table.T) / tau, target).backward()

        def blocked(cache, matmul="fp32"):
            def run():
                saved, L.CACHE_BYTES = L.CACHE_BYTES, cache
                try:
                    L.softmax_cross_entropy(q, table, target, tau, matmul).backward()
                finally:
                    L.CACHE_BYTES = saved
            return run

        def floor():
            with torch.no_grad():
                s = q @ table.T
                s @ table, s.T @ q

        print(f"| | {V} | {timed(baseline):.1f} | {timed(blocked(1 << 40)):.1f} | {timed(blocked(0)):.1f} "
              f"| {timed(blocked(1 << 40, 'bf16')):.1f} | {timed(blocked(0, 'bf16')):.1f} | {timed(floor):.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="651bf8c", help="git revision to compare against ('' = this tree only)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--recipes", nargs="+", default=["matched", "shipped", "full-softmax"], choices=list(RECIPES),
                    help="full-softmax-bf16 only with a --baseline that has train.softmax_matmul, or --baseline ''")
    ap.add_argument("--runs", action="store_true", help="whole genrec train runs of the shipped config (peak RSS with evaluation)")
    ap.add_argument("--run-epochs", type=int, default=3)
    ap.add_argument("--time-to-quality", action="store_true")
    ap.add_argument("--target", type=float, default=0.05)
    ap.add_argument("--max-epochs", type=lambda v: max(1, int(v)), default=60)
    ap.add_argument("--kernels", action="store_true", help="the loss kernels alone (see above)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--set", nargs="*", default=[], help="overrides for every run")
    args = ap.parse_args()
    if args.kernels:
        kernels(args.reps)
        return
    if args.time_to_quality:
        time_to_quality(args.target, args.max_epochs, args.set)
        return
    with tempfile.TemporaryDirectory() as tmp:
        trees: dict[str, Path | None] = {}
        if args.baseline:
            trees[f"baseline {args.baseline}"] = extract(args.baseline, Path(tmp))
        trees["this tree"] = None
        if args.runs:
            runs(trees, args.run_epochs, args.set)
        else:
            epochs(trees, args.rounds, args.recipes, args.set)


if __name__ == "__main__":
    main()
