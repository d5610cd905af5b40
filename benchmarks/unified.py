"""Retrieval + ranking comparison table (issue: UniGRF): separate models, cascade, DIN, and the
unified model with and without its two modules, on one split and one budget per dataset.

    GENREC_SOURCE=../shared/data python benchmarks/unified.py --out /tmp/bench/unified --datasets ml-100k instruments

Each row is ``genrec train`` on a shipped config plus overrides; finished rows are not rerun.
``--backbone llama`` runs the same rows on the ``*-llama`` configs (every setting but the backbone is
the HSTU config's); rows without a Llama config (cascade, DIN, the feedback-only first design)
are skipped there, popularity is shared, and Llama rows go to folders ending in ``-llama``.
Prints a markdown table (test metrics of the validation-selected checkpoint) and writes
OUT/table.md. With ``--seeds 42 43 44`` each seed runs into ``OUT-sSEED`` (``train.seed=SEED``) and
the table gives mean ± standard error over the seeds, validation beside test, written to
OUT-seeds-BACKBONE.md:

    python benchmarks/unified.py --out /tmp/bench/unified40 --datasets ml-100k --backbone llama \
        --seeds 42 43 44 --set train.num_threads=1
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import yaml
from stderr import mean_se

NO_ENHANCER = ["task.hard_negatives=0", "task.potential_positive_alpha=0"]
FIRST_DESIGN = ["task.action_token=feedback"]  # action tokens = a linear map of the feedback alone
ROWS = [
    ("popularity", "popularity", []),  # eval.holdout set to the dataset's ranking split in run()
    ("separate retrieval (HSTU)", "retrieval-hstu", []),
    ("separate ranking (HSTU, interleaved)", "ranking-hstu", []),
    ("cascade (retrieval top-100 -> ranking)", "cascade", []),
    ("DIN", "din", []),
    ("unified, no modules", "unified-hstu-like", ["task.weighter=constant", *NO_ENHANCER]),
    ("unified + enhancer", "unified-hstu-like", ["task.weighter=constant"]),
    ("unified + weighter (DWA)", "unified-hstu-like", NO_ENHANCER),
    ("unified + gradient weighter", "unified-hstu-like", ["task.weighter=gradient", *NO_ENHANCER]),
    ("unified + both (UniGRF)", "unified-hstu-like", []),
    ("unified + enhancer + gradient weighter", "unified-hstu-like", ["task.weighter=gradient"]),
    ("unified, no modules, feedback-only action tokens", "unified-hstu-like", ["task.weighter=constant", *NO_ENHANCER, *FIRST_DESIGN]),
    ("unified + both, feedback-only action tokens", "unified-hstu-like", FIRST_DESIGN),
    # two ranking tasks from each rating: like and the rating itself (task.regression_actions: [rating])
    ("separate ranking + rating task", "ranking-hstu-multitask", []),
    ("unified + both + rating task", "unified-hstu-multitask", []),
    ("unified, no modules + rating task", "unified-hstu-multitask", ["task.weighter=constant", *NO_ENHANCER]),
]


NO_LLAMA = {"cascade (retrieval top-100 -> ranking)", "DIN", "unified, no modules, feedback-only action tokens",
            "unified + both, feedback-only action tokens"}  # rows with no Llama config


def rows(backbone: str, wanted: list[str] | None) -> list[tuple[str, str, list[str]]]:
    """The table's rows for one backbone: (label, config stem, overrides). ``wanted`` names rows by
    their HSTU label (the same names select the Llama rows)."""
    out = []
    for name, cfg, ov in ROWS:
        if wanted and name not in wanted or backbone != "hstu" and name in NO_LLAMA:
            continue
        if backbone == "llama" and cfg != "popularity":
            name, cfg = (name.replace("(HSTU", "(Llama") if "(HSTU" in name else f"{name} (Llama)"), cfg.replace("-hstu", "-llama")
        out.append((name, cfg, ov))
    return out


def run(dataset: str, name: str, config: str, overrides: list[str], out: Path, common: list[str]) -> dict:
    folder = out / dataset / name.split(" (")[0].replace(" ", "-").replace(",", "").replace("+", "plus")
    if "-llama" in config:
        folder = folder.with_name(folder.name + "-llama")
    if config == "popularity":  # the same split as the other rows
        holdout = yaml.safe_load(Path(f"configs/{dataset}/retrieval-hstu.yaml").read_text())["eval"]["holdout"]
        overrides = [*overrides, f"eval.holdout={holdout}"]
    if not (folder / "metrics.json").exists():
        cmd = [sys.executable, "-m", "genrec.cli", "train", f"configs/{dataset}/{config}.yaml", *overrides, *common, "--out", str(folder)]
        print("+", " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((folder / "metrics.json").read_text())


def fmt(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def table(dataset: str, results: list[tuple[str, dict]]) -> str:
    lines = [
        f"**{dataset}** (test split; checkpoint selected on validation)",
        "",
        "| model | NDCG@10 | HR@10 | MRR | AUC | GAUC | LogLoss | list NDCG@10 | train s | best epoch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in results:
        t = m["test"]
        retr = "ndcg@10" in t
        lines.append(
            f"| {name} | {fmt(t.get('ndcg@10')) if retr else '—'} | {fmt(t.get('hr@10')) if retr else '—'} | "
            f"{fmt(t.get('mrr')) if retr else '—'} | {fmt(t.get('auc'))} | {fmt(t.get('gauc'))} | {fmt(t.get('logloss'))} | "
            f"{fmt(t.get('list_ndcg@10'))} | {m.get('train_seconds', 0):.0f} | {m.get('best_epoch')} |"
        )
    return "\n".join(lines)


def seeds_table(dataset: str, backbone: str, results: list[tuple[str, list[dict]]], seeds: list[int]) -> str:
    """Mean ± standard error over seeds (sample std / sqrt(seeds)) of each row's validation and test
    metrics at its validation-selected checkpoint."""

    def cell(runs: list[dict], split: str, key: str) -> str:
        def value(r: dict):
            if key == "rating_mse":
                return r[split].get("tasks", {}).get("rating", {}).get("mse")
            if key == "sum":  # the unified rows' selection metric
                return r[split]["ndcg@10"] + r[split]["auc"] if "ndcg@10" in r[split] and "auc" in r[split] else None
            return r[split].get(key)

        vals = [value(r) for r in runs]
        vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if len(vals) < len(runs):
            return "—"
        m, se = mean_se(vals)
        return f"{m:.4f} ± {se:.4f}" if len(vals) > 1 else f"{m:.4f}"

    lines = [
        f"**{dataset}, {backbone}** (mean ± standard error over seeds {', '.join(map(str, seeds))}; checkpoint selected on "
        "validation; test evaluated once per run)",
        "",
        "| model | valid NDCG@10 | valid AUC | valid NDCG@10 + AUC | test NDCG@10 | test HR@10 | test AUC | test GAUC | test LogLoss | rating MSE "
        "| best epochs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results:
        cells = [cell(runs, s, k) for s, k in [("valid", "ndcg@10"), ("valid", "auc"), ("valid", "sum"), ("test", "ndcg@10"), ("test", "hr@10"),
                                              ("test", "auc"), ("test", "gauc"), ("test", "logloss"), ("test", "rating_mse")]]
        epochs = ", ".join(str(r.get("best_epoch")) for r in runs)
        lines.append(f"| {name} | {' | '.join(cells)} | {epochs} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/bench/unified")
    p.add_argument("--datasets", nargs="+", default=["ml-100k", "instruments"])
    p.add_argument("--rows", nargs="*", help="row names to run (default all)")
    p.add_argument("--backbone", choices=["hstu", "llama"], default="hstu", help="configs/DATASET/*-BACKBONE.yaml")
    p.add_argument("--set", nargs="*", default=[], help="overrides for every row (e.g. train.epochs=20: the same budget)")
    p.add_argument("--seeds", nargs="*", type=int, help="run each seed into OUT-sSEED and report mean ± SE over seeds")
    args = p.parse_args()
    if args.seeds:
        parts = []
        for ds in args.datasets:
            results = [
                (name, [run(ds, name, cfg, ov, Path(f"{args.out}-s{s}"), [*args.set, f"train.seed={s}"]) for s in args.seeds])
                for name, cfg, ov in rows(args.backbone, args.rows)
            ]
            parts.append(seeds_table(ds, args.backbone, results, args.seeds))
        text = "\n\n".join(parts)
        Path(f"{args.out}-seeds-{args.backbone}.md").write_text(text + "\n")
        print(text)
        return
    out = Path(args.out)
    parts = []
    for ds in args.datasets:
        results = [(name, run(ds, name, cfg, ov, out, args.set)) for name, cfg, ov in rows(args.backbone, args.rows)]
        parts.append(table(ds, results))
    text = "\n\n".join(parts)
    (out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
