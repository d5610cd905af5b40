"""Retrieval + ranking comparison table (issue: UniGRF): separate models, cascade, DIN, and the
unified model with and without its two modules, on one split and one budget per dataset.

    GENREC_SOURCE=../shared/data python benchmarks/unified.py --out /tmp/bench/unified --datasets ml-100k instruments

Each row is ``genrec train`` on a shipped config plus overrides; finished rows are not rerun.
Prints a markdown table (test metrics of the validation-selected checkpoint) and writes
OUT/table.md.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import yaml

NO_ENHANCER = ["task.hard_negatives=0", "task.potential_positive_alpha=0"]
FIRST_DESIGN = ["task.action_token=feedback"]  # action tokens = a linear map of the feedback alone
ROWS = [
    ("popularity", "popularity", []),  # eval.holdout set to the dataset's ranking split in run()
    ("separate retrieval (HSTU)", "retrieval-hstu", []),
    ("separate ranking (HSTU, interleaved)", "ranking-hstu", []),
    ("cascade (retrieval top-100 -> ranking)", "cascade", []),
    ("DIN", "din", []),
    ("unified, no modules", "unified-hstu", ["task.weighter=constant", *NO_ENHANCER]),
    ("unified + enhancer", "unified-hstu", ["task.weighter=constant"]),
    ("unified + weighter (DWA)", "unified-hstu", NO_ENHANCER),
    ("unified + gradient weighter", "unified-hstu", ["task.weighter=gradient", *NO_ENHANCER]),
    ("unified + both (UniGRF)", "unified-hstu", []),
    ("unified + enhancer + gradient weighter", "unified-hstu", ["task.weighter=gradient"]),
    ("unified, no modules, feedback-only action tokens", "unified-hstu", ["task.weighter=constant", *NO_ENHANCER, *FIRST_DESIGN]),
    ("unified + both, feedback-only action tokens", "unified-hstu", FIRST_DESIGN),
    # two ranking tasks from each rating: like and the rating itself (task.regression_actions: [rating])
    ("separate ranking + rating task", "ranking-hstu-multitask", []),
    ("unified + both + rating task", "unified-hstu-multitask", []),
]


def run(dataset: str, name: str, config: str, overrides: list[str], out: Path, common: list[str]) -> dict:
    folder = out / dataset / name.split(" (")[0].replace(" ", "-").replace(",", "").replace("+", "plus")
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/bench/unified")
    p.add_argument("--datasets", nargs="+", default=["ml-100k", "instruments"])
    p.add_argument("--rows", nargs="*", help="row names to run (default all)")
    p.add_argument("--set", nargs="*", default=[], help="overrides for every row (e.g. train.epochs=20: the same budget)")
    args = p.parse_args()
    out = Path(args.out)
    parts = []
    for ds in args.datasets:
        results = [(name, run(ds, name, cfg, ov, out, args.set)) for name, cfg, ov in ROWS if not args.rows or name in args.rows]
        parts.append(table(ds, results))
    text = "\n\n".join(parts)
    (out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
