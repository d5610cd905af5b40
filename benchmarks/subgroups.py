"""Test metrics of finished runs on all users and on the users whose test item is rare in training.

    GENREC_SOURCE=../shared/data python benchmarks/subgroups.py /tmp/bench/ablation/beauty-hstu/seed* \
        /tmp/bench/ablation/beauty-hstu-side/seed* --rare 5

For each run folder: its best checkpoint's test ranks, recomputed with the run's own saved
protocol (leave-one-out, full catalogue, history excluded, exactly as metrics.json's test), then
NDCG@10 and HR@10 over all test users and over the "rare-target" users: those whose test item
occurs at most ``--rare`` times among the training interactions (the items before each user's
validation and test items; the counts are the same for every model of one dataset), and, for
runs with ``data.cold_items``, over the users whose test item is one of the items the run never
saw in training (``cold``: can an item be retrieved from its attributes alone?). Runs that
share a parent folder (the seeds of one row of ``benchmarks/ablation.py``) are summarised as the
mean over seeds ± the standard error of that mean; a single run shows its test set's own standard
error (per-user std / sqrt(users)). Test data is only read, never used to choose.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from genrec.checkpoint import load_model
from genrec.config import ExperimentConfig
from genrec.data.splits import cold_item_ids, split_block, train_end
from genrec.data.task_data import load_data
from genrec.evaluation.evaluator import split_ranks
from genrec.evaluation.metrics import per_user

from ablation import cell  # benchmarks/ablation.py: mean ± standard error over seeds


def training_counts(data, holdout: int) -> np.ndarray:
    """[num_items + 1] interactions of each item among the training positions."""
    starts, lengths = data.offsets[:-1], data.lengths
    position = np.arange(len(data.items)) - np.repeat(starts, lengths)
    n_train = np.repeat(train_end(data, False, holdout) - starts, lengths)
    return np.bincount(data.items[position < n_train], minlength=data.num_items + 1)


def run_metrics(run: Path, rare: int) -> dict:
    model, _, experiment = load_model(run / "best")
    cfg = ExperimentConfig.from_dict(experiment)
    data = load_data(cfg)
    ranks = split_ranks(model, data, "test", cfg.eval)  # users in split_block order
    users, target_pos = split_block(data, "test", cfg.eval.holdout)
    counts = training_counts(data, cfg.eval.holdout)
    is_rare = torch.from_numpy(counts[data.items[target_pos]] <= rare)
    values = per_user(ranks, [10])
    out = {"users": len(ranks), "rare_users": int(is_rare.sum())}
    groups = [("all", torch.ones_like(is_rare)), ("rare", is_rare)]
    if cfg.data.cold_items:  # the items this run never saw in training (data.cold_items)
        is_cold = torch.from_numpy(np.isin(data.items[target_pos], cold_item_ids(data.num_items, cfg.data.cold_items)))
        groups.append(("cold", is_cold))
        out["cold_users"] = int(is_cold.sum())
    for name in ("ndcg@10", "hr@10"):
        for group, chosen in groups:
            v = values[name][chosen]
            out[f"{group} {name}"] = v.mean().item() if len(v) else math.nan
            out[f"{group} {name} se"] = (v.std() / math.sqrt(len(v))).item() if len(v) > 1 else math.nan
    return out


def with_test_se(res: list[dict], col: str) -> str:
    """A cell over seeds; with one seed, the value and the test set's own standard error."""
    if col not in res[0]:
        return "-"
    if len(res) == 1:
        return f"{res[0][col]:.4f} (SE {res[0][col + ' se']:.4f})"
    return cell([r[col] for r in res])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--rare", type=int, default=5, help="a test item is rare when it has at most this many training interactions")
    args = ap.parse_args()
    rows: dict[str, list[dict]] = {}
    for run in args.runs:
        rows.setdefault(run.parent.name, []).append(run_metrics(run, args.rare))
    cols = ["all ndcg@10", "all hr@10", "rare ndcg@10", "rare hr@10"]
    if any("cold_users" in r[0] for r in rows.values()):
        cols += ["cold ndcg@10", "cold hr@10"]
    print(f"test split; rare = test item with <= {args.rare} training interactions in the data; cold = test item among "
          "the run's data.cold_items (never in its training); mean ± standard error over seeds "
          "(one seed: the test set's standard error)\n")
    print("| row | seeds | users (rare, cold) | " + " | ".join(cols) + " |\n|---|---|---|" + "---|" * len(cols))
    for name, res in rows.items():
        print(f"| {name} | {len(res)} | {res[0]['users']} ({res[0]['rare_users']}, {res[0].get('cold_users', '-')}) | "
              + " | ".join(with_test_se(res, c) for c in cols) + " |")


if __name__ == "__main__":
    main()
