"""Average `genrec scale` sweeps that differ only in their seed: one table row per grid point.

    for s in 42 43 44; do
        genrec scale configs/sweeps/beauty-data.yaml train.seed=$s --out /tmp/bench/scale-data/seed$s
    done
    python benchmarks/scale_seeds.py /tmp/bench/scale-data/seed42 /tmp/bench/scale-data/seed43 /tmp/bench/scale-data/seed44

Each folder's results.csv holds that seed's points; a point is (backbone, layers, width, data
fraction). Prints validation and test NDCG@10 / HR@10 of each point's best-validation epoch as the
mean over seeds ± the standard error of that mean (std / sqrt(seeds)), with the number of seeds
that finished the point. The sweeps must have the same grid and differ only in ``train.seed``
(checked from each folder's sweep.yaml).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

import yaml

from ablation import cell  # benchmarks/ablation.py: mean ± standard error over seeds

KEY = ("backbone", "layers", "width", "data_fraction")
METRICS = ("valid_ndcg@10", "valid_hr@10", "test_ndcg@10", "test_hr@10")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="sweep output folders, one per seed")
    args = ap.parse_args()
    grids, points = [], {}
    for folder in map(Path, args.folders):
        sweep = yaml.safe_load((folder / "sweep.yaml").read_text())
        grids.append({**sweep, "overrides": [o for o in sweep["overrides"] if not o.startswith("train.seed=")]})
        for row in csv.DictReader(open(folder / "results.csv")):
            points.setdefault(tuple(row[k] for k in KEY), []).append(row)
    if any(g != grids[0] for g in grids):
        sys.exit("the sweeps differ in more than train.seed: average only repeats of one sweep")
    print(f"{len(args.folders)} seeds; mean ± standard error over seeds; leave-one-out, full catalogue, history excluded; "
          "each point at its best validation epoch\n")
    print("| backbone | layers | width | data fraction | seeds | valid NDCG@10 | valid HR@10 | test NDCG@10 | test HR@10 | best epoch (mean) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted(points, key=lambda k: (k[0], int(k[1]), int(k[2]), float(k[3]))):
        rows = points[key]
        cells = " | ".join(cell([float(r[m]) for r in rows]) for m in METRICS)
        print(f"| {' | '.join(key)} | {len(rows)} | {cells} | {statistics.mean(float(r['best_epoch']) for r in rows):.0f} |")


if __name__ == "__main__":
    main()
