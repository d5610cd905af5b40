"""Cost of UniGRF's ranking-driven enhancer per training step, against a plain unified step (issue
12's target: <= 1.3x), side by side in one run.

    GENREC_SOURCE=../shared/data python benchmarks/enhancer_cost.py --dataset ml-100k --steps 20 --rounds 3

Each variant is configs/<dataset>/unified-hstu-like.yaml with overrides (below), built by the trainer's
own code (``make_trainer``) from the same seed, and timed on the same first ``--steps`` batches
of an epoch in which the enhancer is on (``task.enhancer_warmup_epochs``) with the trainer's own
step (``train_step``: forward, both losses, backward, optimizer). Rounds alternate the variants
(A, B, C, A, B, C, ...) so that a drift in the machine's load hits each alike; the median
seconds per step over rounds is reported, and its ratio to the plain step. One torch thread.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch

from genrec.config import load_config
from genrec.data.prepare import load_prepared, prepare
from genrec.experiments.run import make_trainer
from genrec.training.trainer import train_step

ROOT = Path(__file__).resolve().parent.parent
OFF = ["task.hard_negatives=0", "task.potential_positive_alpha=0"]
VARIANTS = {
    "plain unified step (no enhancer)": OFF,
    "enhancer, negatives pool (shipped: pool 8, 5% of the rows)": [],
    "enhancer, negatives pool, every row": ["task.enhancer_rows=1.0"],
    "enhancer, catalogue pool (first design)": ["task.enhancer_pool=catalogue"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--set", nargs="*", default=[], help="overrides for every variant")
    args = p.parse_args()
    torch.set_num_threads(1)
    config = ROOT / "configs" / args.dataset / "unified-hstu-like.yaml"  # the like-only config (ML-100K, Instruments)
    if not config.exists():  # other datasets' unified-hstu.yaml is still the like-only one
        config = config.with_name("unified-hstu.yaml")
    data = load_prepared(prepare(load_config(config, args.set).data))
    runs = {}
    for name, extra in VARIANTS.items():
        cfg = load_config(config, [*args.set, *extra, "train.num_threads=1", "train.device=cpu"])
        with tempfile.TemporaryDirectory() as tmp:
            trainer = make_trainer(cfg, tmp, data)  # nothing is written before fit()
        trainer.model.train()
        epoch = max(cfg.task.enhancer_warmup_epochs, 0)
        batches = list(itertools.islice(trainer.batches.epoch(cfg.train.seed, epoch), args.warmup + args.steps))
        runs[name] = (trainer, cfg, epoch, batches)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (trainer, cfg, epoch, batches) in runs.items():
            torch.manual_seed(cfg.train.seed)
            for i, b in enumerate(batches):
                if i == args.warmup:
                    start = time.perf_counter()
                train_step(trainer.step_module, trainer.optimizer, b, epoch, cfg.train, trainer.strategy, trainer.clip_parameters)
            times[name].append((time.perf_counter() - start) / args.steps)
    base = statistics.median(times[next(iter(runs))])
    print(f"\n{args.dataset}: {args.steps} steps x {args.rounds} rounds, batch {runs[next(iter(runs))][1].train.batch_size}, "
          f"pool {runs[next(iter(runs))][1].task.candidate_pool}, torch {torch.__version__}, 1 thread\n")
    print("| variant | overrides | ms/step (median of rounds) | vs plain |\n|---|---|---|---|")
    for name, extra in VARIANTS.items():
        med = statistics.median(times[name])
        print(f"| {name} | {' '.join(extra) or '(config as shipped)'} | {med * 1000:.1f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
