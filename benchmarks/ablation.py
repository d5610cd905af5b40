"""Config ablations over seeds: each row a shipped config, each cell mean ± standard error over seeds.

    GENREC_SOURCE=../shared/data python benchmarks/ablation.py --out /tmp/bench/ablation \
        --rows ml-100k/hstu ml-100k/hstu-softmax --seeds 42 43 44 --jobs 2

Each (row, seed) is ``genrec train configs/<row>.yaml train.seed=<seed> train.num_threads=1`` in
its own process and run folder (finished folders are reused, so an interrupted sweep continues);
``--jobs`` of them run at once. Prints, per row: validation and test NDCG@10 / HR@10 of the
validation-selected checkpoint (leave-one-out, full catalogue, history excluded), as the mean over
seeds ± the standard error of that mean (std / sqrt(seeds); with one seed, the value alone), the
mean best epoch and training seconds. Test metrics are read, never used for any choice.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(row: str, seed: int, out: Path, extra: list[str]) -> dict:
    folder = out / row.replace("/", "-") / f"seed{seed}"
    if not (folder / "metrics.json").exists():
        if (folder / "config.yaml").exists():  # an interrupted run: continue it with its saved config
            cmd = [sys.executable, "-m", "genrec.cli", "train", "--out", str(folder), "--resume"]
        else:
            cmd = [sys.executable, "-m", "genrec.cli", "train", str(ROOT / "configs" / f"{row}.yaml"), f"train.seed={seed}",
                   "train.num_threads=1", *extra, "--out", str(folder), "--overwrite"]
        print("+", " ".join(cmd), file=sys.stderr, flush=True)
        log = folder.parent / f"seed{seed}.stderr"  # a file, not a pipe: a run outlives this driver if it is stopped
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as err:  # appended: a resumed run keeps the earlier attempt's log
            proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed (log: {log}):\n{log.read_text(errors='replace')[-2000:]}")
    return json.loads((folder / "metrics.json").read_text())


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) / math.sqrt(len(values)):.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rows", nargs="+", required=True, help="config paths under configs/, without .yaml")
    ap.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], help="overrides for every run")
    args = ap.parse_args()
    out = Path(args.out)
    jobs = [(row, seed) for row in args.rows for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run(*job, out, args.set), jobs))
    by_row: dict[str, list[dict]] = {}
    for (row, _), res in zip(jobs, results):
        by_row.setdefault(row, []).append(res)
    print(f"seeds {args.seeds}; mean ± standard error over seeds; leave-one-out, full catalogue, history excluded; "
          "checkpoint = best validation NDCG@10\n")
    print("| row | valid NDCG@10 | valid HR@10 | test NDCG@10 | test HR@10 | best epoch (mean) | train s (mean) |")
    print("|---|---|---|---|---|---|---|")
    for row, res in by_row.items():
        get = lambda split, m: [r[split][m] for r in res]  # noqa: E731
        print(f"| {row} | {cell(get('valid', 'ndcg@10'))} | {cell(get('valid', 'hr@10'))} | {cell(get('test', 'ndcg@10'))} "
              f"| {cell(get('test', 'hr@10'))} | {statistics.mean(r['best_epoch'] for r in res):.0f} "
              f"| {statistics.mean(r['train_seconds'] for r in res):.0f} |")


if __name__ == "__main__":
    main()
