"""Quality benchmark: train each (config, overrides) row, then write a Markdown results table.

    GENREC_SOURCE=../shared/data python benchmarks/quality.py --out runs/bench \
        --rows beauty/sasrec beauty/hstu toys/sasrec toys/hstu ml-100k/hstu ml-100k/sasrec

Every row: full-catalogue ranking, leave-one-out, the user's earlier items excluded, best epoch
on validation NDCG@10, test metrics of that epoch. Rows already finished in --out are not rerun
(their metrics.json is read), and an interrupted row resumes from its last epoch. With --refit,
each finished row also gets ``test_refit``: a fresh model trained on training + validation items
for the row's validation-selected number of epochs, tested once (selection is not rerun).

With --seeds S1 S2 ..., every row is trained once per seed (``train.seed=S``, folder ``NAME-sS``)
and a second table gives, per row, valid NDCG@10 and test NDCG@10 / HR@10 as the mean over seeds
± its standard error over seeds (sample std / sqrt(seeds)), beside the test set's own standard
error over users (the mean of the seeds' runs): the first says how much the training seed moves
the number, the second how much the draw of test users would.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from genrec import jsonio
from genrec.config import load_config
from genrec.experiments.run import add_refit as refit_into
from genrec.experiments.run import make_trainer, train
from stderr import mean_se, user_se  # benchmarks/stderr.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent


def row_dir(out: Path, name: str, seed: int | None = None) -> Path:
    return out / (name.replace("/", "-") + ("" if seed is None else f"-s{seed}"))


def run_row(name: str, overrides: list[str], out: Path, seed: int | None = None) -> dict:
    run_dir = row_dir(out, name, seed)
    overrides = overrides + ([] if seed is None else [f"train.seed={seed}"])
    if (run_dir / "metrics.json").exists():
        return json.loads((run_dir / "metrics.json").read_text())
    resume = (run_dir / "last" / "state.json").exists()
    cfg = load_config(run_dir / "config.yaml" if resume else ROOT / "configs" / f"{name}.yaml", [] if resume else overrides)
    return train(cfg, run_dir, resume=resume)


def add_refit(run_dir: Path) -> None:
    """Add ``test_refit`` to a finished row's metrics.json (no-op when present)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if "test_refit" in metrics:
        return
    trainer = make_trainer(load_config(run_dir / "config.yaml"), run_dir)
    jsonio.write_json(run_dir / "metrics.json", refit_into(trainer, metrics))


def row_stats(run_dir: Path) -> tuple[float, float]:
    """(median seconds per training epoch, peak RSS MB) from the run's log."""
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    secs = sorted(r["seconds"] for r in log)
    return secs[len(secs) // 2], max(r["peak_rss_mb"] for r in log)


def _cell(values: list[float]) -> str:
    """mean ± standard error over runs (one run: its value)."""
    return "{:.4f} ± {:.4f}".format(*mean_se(values)) if len(values) > 1 else f"{values[0]:.4f}"


def seeds_table(out: Path, rows: list[str], seeds: list[int]) -> str:
    """Per row: mean ± standard error over seeds, and the test set's standard error over users."""
    lines = [
        "| row | seeds | best epochs | valid NDCG@10 | test NDCG@10 | test HR@10 | test-set s.e. NDCG@10 / HR@10 (over users) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in rows:
        dirs = [row_dir(out, name, s) for s in seeds]
        runs = [json.loads((d / "metrics.json").read_text()) for d in dirs]
        users = [user_se(d) for d in dirs]
        lines.append(
            f"| {name} | {' '.join(map(str, seeds))} | {' '.join(str(m['best_epoch']) for m in runs)} | "
            f"{_cell([m['valid']['ndcg@10'] for m in runs])} | {_cell([m['test']['ndcg@10'] for m in runs])} | "
            f"{_cell([m['test']['hr@10'] for m in runs])} | "
            f"{sum(u['ndcg@10'] for u in users) / len(users):.4f} / {sum(u['hr@10'] for u in users) / len(users):.4f} |"
        )
    return "\n".join(lines)


def table(out: Path, rows: list[str], seeds: list[int | None]) -> str:
    lines = [
        "| row | model | best epoch / run | valid NDCG@10 | test NDCG@10 | test HR@10 | test NDCG@50 | test HR@50 | test MRR | refit test NDCG@10 / HR@10 | s/epoch | peak RSS MB | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, seed in ((n, s) for n in rows for s in seeds):
        run_dir = row_dir(out, name, seed)
        m = json.loads((run_dir / "metrics.json").read_text())
        sec, rss = row_stats(run_dir)
        t, p = m["test"], m["protocol"]
        r = m.get("test_refit")
        refit = f"{r['ndcg@10']:.4f} / {r['hr@10']:.4f}" if r else "-"
        lines.append(
            f"| {name}{'' if seed is None else f' (seed {seed})'} | {p['model']} | {m['best_epoch']} / {m['epochs_run']} | {m['valid']['ndcg@10']:.4f} | "
            f"{t['ndcg@10']:.4f} | {t['hr@10']:.4f} | {t['ndcg@50']:.4f} | {t['hr@50']:.4f} | {t['mrr']:.4f} | {refit} | "
            f"{sec:.1f} | {rss:.0f} | {'; '.join(p['notes']) or '-'} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--rows", nargs="+", required=True, help="config names under configs/, e.g. beauty/hstu")
    ap.add_argument("--set", nargs="*", default=[], help="overrides applied to every row (recorded in the table)")
    ap.add_argument("--refit", action="store_true", help="also retrain each row on train+valid for its selected epochs")
    ap.add_argument("--seeds", nargs="+", type=int, default=None,
                    help="train every row once per seed (train.seed) and add a mean ± s.e. over seeds table")
    args = ap.parse_args()
    out = Path(args.out)
    if args.seeds and any(o.startswith("train.seed=") for o in args.set):
        ap.error("--seeds sets train.seed; leave it out of --set")
    seeds = args.seeds or [None]
    for name, seed in ((n, s) for n in args.rows for s in seeds):
        start = time.time()
        run_row(name, args.set, out, seed)
        if args.refit:
            add_refit(row_dir(out, name, seed))
        print(f"{name}{'' if seed is None else f' seed {seed}'}: done in {time.time() - start:.0f}s", flush=True)
    header = (
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} / {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; overrides: {' '.join(args.set) or 'none'}.\n"
    )
    print(header + "\n" + table(out, args.rows, seeds))
    if args.seeds:
        print("\nOver seeds (mean ± standard error over seeds):\n\n" + seeds_table(out, args.rows, args.seeds))


if __name__ == "__main__":
    main()
