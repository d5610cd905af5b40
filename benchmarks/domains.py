"""Multi-domain Beauty + Toys: joint vs single-domain models, per domain, on all users, on the
users who are in both domains, and on those users as if new to the domain (cold).

    GENREC_SOURCE=../shared/data python benchmarks/ablation.py --out /tmp/bench/domains \
        --rows beauty-toys/hstu beauty-toys/hstu-beauty beauty-toys/hstu-toys --seeds 42 --jobs 2
    GENREC_SOURCE=../shared/data python benchmarks/domains.py /tmp/bench/domains/beauty-toys-hstu*/seed42

For each run (its ``best`` checkpoint, selected on validation) and each domain it evaluates, the
test split (leave-one-out, the domain's full catalogue, history excluded):

- ``all``: every user of the domain;
- ``both``: the users who are in both domains (2,073 in the P5 files); the joint model reads their
  other-domain training items as context, the single-domain model does not;
- ``cold``: the same users with their history in the target domain cut to its last 2 items
  (the joint model keeps the context): a simulation of a user new to the domain, not true cold
  start, since every model here was trained on these users' earlier items in the domain;
- ``both-own`` and ``cold-own``: ``both`` and ``cold`` with the other domain's items dropped, so
  every model reads the row's own domain only. A diagnostic for the joint model: against ``both``
  it shows what reading the context adds; against the single-domain model, what the joint
  training alone does. For a single-domain model they repeat ``both`` and ``cold``.

Rows are run folders grouped by their parent folder (one per config), mean ± standard error over
seeds when there are several. Test metrics are read; nothing here chooses anything.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from genrec.checkpoint import load_model
from genrec.config import DataConfig, ExperimentConfig
from genrec.data.splits import domain_of_items, split_block
from genrec.data.behaviours import with_behaviours
from genrec.data.domains import cold_rows, rows_with_context, without_context
from genrec.data.prepare import load_prepared, prepare
from genrec.evaluation.evaluator import split_ranks
from genrec.evaluation.metrics import per_user

from ablation import cell  # benchmarks/ablation.py: mean ± standard error over seeds

COLD_KEEP = 2
GROUPS = ("all", "both", "cold", "both-own", "cold-own")


def users_in_both(domains: list[str], cache_dir: str | None) -> set[str]:
    """Row ids (``<domain>:<user>``) of the users who are in several of ``domains`` (their join)."""
    joint = load_prepared(prepare(DataConfig(domains=domains, cache_dir=cache_dir)))
    return set(joint.user_ids[rows_with_context(joint)])


def by_domain(model, data, cfg, subset: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """{domain: {ndcg@10, hr@10, users}} on the test split of ``data`` (rows ``subset`` only)."""
    data = with_behaviours(data, cfg.data)
    ranks = split_ranks(model, data, "test", cfg.eval)  # split_block order
    users, target_pos = split_block(data, "test", cfg.eval.holdout)
    domain = domain_of_items(data, data.items[target_pos])
    keep = np.ones(len(users), dtype=bool) if subset is None else subset[users]
    values = per_user(ranks, [10])
    out = {}
    for d, info in enumerate(data.stats["domains"]):
        chosen = keep & (domain == d)
        if chosen.any():
            v = {m: values[m].numpy()[chosen] for m in ("ndcg@10", "hr@10")}
            out[info["name"]] = {m: float(x.mean()) for m, x in v.items()} | {"users": int(chosen.sum())}
            out[info["name"]] |= {f"{m} se": float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else math.nan for m, x in v.items()}
    return out


def run_metrics(run: Path, both: set[str]) -> dict[str, dict[str, dict]]:
    """The run's groups, computed once and kept in ``RUN/domains.json`` (recomputed when the best
    checkpoint is newer)."""
    saved = run / "domains.json"
    if saved.exists() and saved.stat().st_mtime > (run / "best" / "model.safetensors").stat().st_mtime:
        kept = json.loads(saved.read_text())
        if set(GROUPS) <= set(kept):  # written before a group was added: computed again
            return kept
    out = _run_metrics(run, both)
    saved.write_text(json.dumps(out))
    return out


def _run_metrics(run: Path, both: set[str]) -> dict[str, dict[str, dict]]:
    model, _, experiment = load_model(run / "best")
    cfg = ExperimentConfig.from_dict(experiment)
    data = load_prepared(prepare(cfg.data))
    in_both = np.isin(data.user_ids.astype(str), list(both))
    return {
        "all": by_domain(model, data, cfg),
        "both": by_domain(model, data, cfg, in_both),
        "cold": by_domain(model, cold_rows(data, COLD_KEEP, in_both), cfg),
        "both-own": by_domain(model, without_context(data, in_both), cfg),
        "cold-own": by_domain(model, cold_rows(data, COLD_KEEP, in_both, context=False), cfg),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--domains", nargs="+", default=["beauty-p5", "toys-p5"], help="the joint model's data.domains")
    args = ap.parse_args()
    both = users_in_both(args.domains, None)
    results: dict[str, list[dict]] = {}
    for run in args.runs:
        results.setdefault(run.parent.name, []).append(run_metrics(run, both))
    print(f"test split, leave-one-out, each domain's full catalogue, history excluded; best-validation checkpoint; "
          f"both = users in both domains; cold = those users with their target-domain history cut to its last {COLD_KEEP} "
          "items (a simulation: the models were trained on their earlier items); -own = the same users reading their "
          "target domain only (the other domain's items dropped); mean ± standard error over seeds "
          "(one seed: in brackets, the test set's standard error)\n")
    groups = GROUPS
    print("| run | domain | " + " | ".join(f"{g} NDCG@10 | {g} HR@10" for g in groups) + " | users (all / both) |")
    print("|---|---|" + "---|---|" * len(groups) + "---|")
    for name, res in results.items():
        for domain in res[0]["all"]:
            cells = []
            for g in groups:
                for m in ("ndcg@10", "hr@10"):
                    if domain not in res[0][g]:
                        cells.append("-")
                    elif len(res) == 1:  # one seed: the test set's own standard error
                        cells.append(f"{res[0][g][domain][m]:.4f} ({res[0][g][domain][m + ' se']:.4f})")
                    else:
                        cells.append(cell([r[g][domain][m] for r in res]))
            users = f"{res[0]['all'][domain]['users']} / {res[0]['both'].get(domain, {}).get('users', 0)}"
            print(f"| {name} | {domain} | " + " | ".join(cells) + f" | {users} |")


if __name__ == "__main__":
    main()
