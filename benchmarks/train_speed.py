"""Training throughput and model FLOPs utilisation: fp32 vs bf16, padded vs bucketed vs packed,
eager vs torch.compile, for HSTU and SASRec on real data; and the end-to-end check at equal quality.

    GENREC_SOURCE=../shared/data python benchmarks/train_speed.py --datasets beauty ml-100k
    GENREC_SOURCE=../shared/data python benchmarks/train_speed.py --quality ml-100k --set train.epochs=20
    GENREC_SOURCE=../shared/data python benchmarks/train_speed.py --epoch-pairs beauty --rounds 3

Throughput mode: per case, the first --warmup + --steps training steps of epoch 1 with the
dataset's frozen config (configs/<dataset>/<model>.yaml, precision and layout overridden); the
--steps after warm-up are timed. ``layout``: ``padded`` = random batches right-padded to their
longest row (the baseline); ``bucketed`` = ``train.bucket_by_length``; ``packed`` = ``train.pack``.
tokens/s counts real training targets only. Model FLOPs per step (counting real tokens only,
forward + backward = 3 x forward): 2 N_ne T + 4 L D K + 2 D S T, with T targets, K = sum over
sequences of n(n+1)/2 attended (query, key) pairs, S scored items per target. MFU = model FLOP/s
divided by the machine's measured dense matmul peak in the same precision (printed first).
The padding fraction is measured over a whole epoch of each layout.

Quality mode: full training runs (best validation epoch, leave-one-out, full catalogue) of HSTU
in the fp32 padded baseline and in bf16 packed, side by side: training seconds and test metrics.

Epoch-pairs mode: whole training epochs (the trainer's own epoch loop, no evaluation) of the fp32
padded baseline and of bf16 packed, alternating A, B, A, B, ... for --rounds rounds so that a
drift in the shared machine's load hits both alike; prints every epoch and the ratio of medians.
Run alone on an idle machine; compare within one run.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch

from genrec.config import load_config
from genrec.data.prepare import load_prepared, prepare
from genrec.experiments.run import make_trainer, train
from genrec.experiments.scaling.flops import count_parameters, step_flops
from genrec.training.trainer import train_step

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = {"padded": [], "bucketed": ["train.bucket_by_length=true"], "packed": ["train.pack=true"]}


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start)


def attended_pairs(batch) -> int:
    """Sum over the batch's sequences of n(n+1)/2 (causal query-key pairs of real tokens)."""
    seg = batch.segments if batch.segments is not None else (batch.items != 0).long()
    total = 0
    for row in seg:
        counts = torch.bincount(row[row != 0])
        total += int((counts * (counts + 1) // 2).sum())
    return total


def padding_fraction(batches) -> float:
    real = slots = 0
    for b in batches:
        real, slots = real + int((b.items != 0).sum()), slots + b.items.numel()
    return 1 - real / slots


def throughput(cfg, data, steps: int, warmup: int, compiled: bool) -> dict:
    """The trainer's own step (:func:`genrec.training.trainer.train_step`) on the first batches of epoch 1."""
    cfg = copy.deepcopy(cfg)
    cfg.train.compile, cfg.train.device = compiled, "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(cfg, tmp, data)  # nothing is written before fit()
    model = trainer.model.train()
    epoch_batches = trainer.batches
    pad = padding_fraction(epoch_batches.epoch(cfg.train.seed, 0))
    batches = list(itertools.islice(epoch_batches.epoch(cfg.train.seed, 0), warmup + steps))
    for i, b in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        train_step(trainer.step_module, trainer.optimizer, b, 0, cfg.train, trainer.strategy, trainer.clip_parameters)
    seconds = time.perf_counter() - start
    timed = batches[warmup:]
    T = sum(b.num_targets for b in timed)
    K = sum(attended_pairs(b) for b in timed)
    flops = step_flops(cfg, count_parameters(model)["params_nonembedding"], T, K, model.num_items)
    return {"tokens_per_s": T / seconds, "flops_per_s": flops / seconds, "padding": pad}


def throughput_table(datasets: list[str], models: list[str], steps: int, warmup: int, extra: list[str]) -> None:
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; measured matmul peak (2048^3): "
          f"fp32 {peaks['fp32'] / 1e12:.2f} TFLOP/s, bf16 {peaks['bf16'] / 1e12:.2f} TFLOP/s\n")
    print("| dataset | model | precision | layout | padding | tokens/s | vs fp32 padded | model TFLOP/s | MFU |\n|---|---|---|---|---|---|---|---|---|")
    cases = [(p, lay, False) for p in ("fp32", "bf16") for lay in LAYOUTS] + [("bf16", "packed", True)]
    for ds, name in itertools.product(datasets, models):
        data_cfg = load_config(ROOT / "configs" / ds / f"{name}.yaml", extra)
        data = load_prepared(prepare(data_cfg.data))
        base = None
        for precision, layout, compiled in cases:
            cfg = load_config(ROOT / "configs" / ds / f"{name}.yaml", [*extra, "train.bucket_by_length=false", f"train.precision={precision}", *LAYOUTS[layout]])
            r = throughput(cfg, data, steps, warmup, compiled)
            base = base or r["tokens_per_s"]
            label = layout + (" + compile" if compiled else "")
            print(f"| {ds} | {name} | {precision} | {label} | {r['padding']:.1%} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base:.2f}x "
                  f"| {r['flops_per_s'] / 1e12:.3f} | {r['flops_per_s'] / peaks[precision]:.1%} |", flush=True)


def quality(dataset: str, extra: list[str]) -> None:
    print("| dataset | setting | train s | epochs (best) | s/epoch | speed-up | valid NDCG@10 | test NDCG@10 | test HR@10 |\n|---|---|---|---|---|---|---|---|---|")
    base = None
    for label, sets in (("fp32 padded", ["train.precision=fp32", "train.bucket_by_length=false"]),
                        ("bf16 packed", ["train.precision=bf16", "train.bucket_by_length=false", "train.pack=true"])):
        cfg = load_config(ROOT / "configs" / dataset / "hstu.yaml", [*extra, *sets])
        with tempfile.TemporaryDirectory() as tmp:
            r = train(copy.deepcopy(cfg), tmp)
        per_epoch = r["train_seconds"] / r["epochs_run"]
        base = base or per_epoch
        print(f"| {dataset} | {label} | {r['train_seconds']:.0f} | {r['epochs_run']} ({r['best_epoch']}) | {per_epoch:.2f} | {base / per_epoch:.2f}x "
              f"| {r['valid']['ndcg@10']:.4f} | {r['test']['ndcg@10']:.4f} | {r['test']['hr@10']:.4f} |", flush=True)


def epoch_pairs(dataset: str, rounds: int, extra: list[str]) -> None:
    layouts = (("fp32 padded", ["train.precision=fp32", "train.bucket_by_length=false"]),
               ("bf16 packed", ["train.precision=bf16", "train.bucket_by_length=false", "train.pack=true"]))
    with tempfile.TemporaryDirectory() as tmp:
        trainers = [make_trainer(load_config(ROOT / "configs" / dataset / "hstu.yaml", [*extra, *sets]), Path(tmp) / label.replace(" ", "-"))
                    for label, sets in layouts]
        seconds: dict[str, list[float]] = {label: [] for label, _ in layouts}
        print(f"| {dataset} HSTU | round | epoch seconds | tokens/s |\n|---|---|---|---|")
        for r in range(rounds):
            for (label, _), trainer in zip(layouts, trainers):
                rec = trainer.train_epoch(r)
                seconds[label].append(rec["seconds"])
                print(f"| {label} | {r + 1} | {rec['seconds']:.2f} | {rec['tokens_per_s']:.0f} |", flush=True)
    med = {label: statistics.median(v) for label, v in seconds.items()}
    print("median epoch: " + ", ".join(f"{k} {v:.2f} s" for k, v in med.items())
          + f"; speed-up {med['fp32 padded'] / med['bf16 packed']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["beauty", "ml-100k"])
    ap.add_argument("--models", nargs="+", default=["hstu", "sasrec"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--quality", help="dataset for the end-to-end fp32-padded vs bf16-packed training comparison")
    ap.add_argument("--epoch-pairs", help="dataset for alternating whole epochs, fp32 padded vs bf16 packed")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--set", nargs="*", default=[], help="overrides for every case")
    args = ap.parse_args()
    if args.quality:
        quality(args.quality, args.set)
    elif args.epoch_pairs:
        epoch_pairs(args.epoch_pairs, args.rounds, args.set)
    else:
        throughput_table(args.datasets, args.models, args.steps, args.warmup, args.set)


if __name__ == "__main__":
    main()
