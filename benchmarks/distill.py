"""SLMRec distillation table (issue 13): deep teacher, shallow student from scratch, distilled student,
ablations, per dataset and backbone.

    GENREC_SOURCE=../shared/data python benchmarks/distill.py --out runs/distill-bench \
        --datasets beauty toys --backbones hstu sasrec --seeds 42 43 44

Runs per dataset x backbone (configs/<dataset>/teacher-<backbone>.yaml and distill-<backbone>.yaml):

- ``teacher``: 8 layers, one per seed;
- ``scratch``: the 2-layer student trained alone (``genrec train`` of distill-<backbone>.yaml: same
  config, same training budget), one per seed;
- ``distilled``: the same student under the teacher of the same seed (``genrec distill``), one per seed;
- ``distilled-logits``: the same, plus genrec's score term (``distill.logit_weight=1``, τ = 1: the
  teacher's full-catalogue softmax as a soft target), one per seed;
- ``no-cos-l2`` / ``no-multi-sup``: ablations on the first seed (λ1 = λ2 = 0 / λ3 = 0).

Every run: full catalogue, leave-one-out, the user's earlier items excluded, best epoch on
validation NDCG@10, test metrics of that epoch. Finished runs are read, not rerun; an interrupted
run resumes from its last epoch. The table gives test NDCG@10 and HR@10 as the mean over seeds ±
its standard error over seeds (one seed: ± the standard error over test users, marked "u"), the
parameters (non-embedding / total), training s/epoch (median epoch of the row's runs), the
inference latency per user: user vector + full-catalogue top-10 with the history excluded, for
the longest test histories, at batch 1 and 256 (median of --repeats timed calls after warm-up,
first seed's model, --threads torch threads; the rows' calls interleaved, round by round; the
user vectors' share of batch 256 timed apart) and the selected epochs' validation NDCG@10 (mean ±
s.e. over seeds). Then the issue's targets, checked for each distilled row.

Smoke test (minutes, not a result): --seeds 42 --datasets beauty --backbones sasrec
    --set train.epochs=1 train.data_fraction=0.02 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

from genrec.checkpoint import load_model
from genrec.config import ExperimentConfig, load_config
from genrec.data.batches import eval_batches
from genrec.data.task_data import load_data
from genrec.experiments.distill import distill
from genrec.experiments.run import train
from genrec.training.tasks.distill import parameter_counts
from stderr import mean_se, user_se  # benchmarks/stderr.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
ABLATIONS = {"no-cos-l2": ["distill.cosine_weight=0", "distill.l2_weight=0"], "no-multi-sup": ["distill.supervision_weight=0"]}
DISTILLED = {"distilled": [], "distilled-logits": ["distill.logit_weight=1"]}
ROLES = ("teacher", "scratch", *DISTILLED, *ABLATIONS)


# ---- training ------------------------------------------------------------------------------------

def run(kind: str, config: Path, overrides: list[str], folder: Path) -> None:
    """Train (``kind`` = train or distill) into ``folder`` unless it holds a finished run."""
    if (folder / "metrics.json").exists():
        return
    resume = (folder / "config.yaml").exists()
    cfg = load_config(folder / "config.yaml" if resume else config, [] if resume else overrides)
    start = time.time()
    (distill if kind == "distill" else train)(cfg, folder, resume=resume)
    print(f"{folder}: done in {time.time() - start:.0f}s", flush=True)


def train_rows(out: Path, dataset: str, backbone: str, seeds: list[int], sets: list[str]) -> None:
    configs = ROOT / "configs" / dataset
    for i, seed in enumerate(seeds):
        common = [*sets, f"train.seed={seed}"]
        teacher = out / f"teacher-s{seed}"
        run("train", configs / f"teacher-{backbone}.yaml", common, teacher)
        run("train", configs / f"distill-{backbone}.yaml", common, out / f"scratch-s{seed}")
        with_teacher = [*common, f"distill.teacher={(teacher / 'best').resolve()}"]
        for name, extra in DISTILLED.items():
            run("distill", configs / f"distill-{backbone}.yaml", [*with_teacher, *extra], out / f"{name}-s{seed}")
        for name, extra in ABLATIONS.items() if i == 0 else ():
            run("distill", configs / f"distill-{backbone}.yaml", [*with_teacher, *extra], out / f"{name}-s{seed}")


# ---- measuring -----------------------------------------------------------------------------------

@torch.no_grad()
def latencies_ms(folders: dict[str, Path], repeats: int) -> dict[str, tuple[float, float, float]]:
    """Milliseconds per user (batch 1, batch 256, and of batch 256 the user vectors alone) of each
    role's model: user vector + top-10 over the catalogue, for the longest test histories. The
    roles' calls are interleaved (each round times every model once), so a slower stretch of a
    shared machine hits every row alike."""
    calls = {}
    for role, folder in folders.items():
        model, _, experiment = load_model(folder / "best")
        cfg = ExperimentConfig.from_dict(experiment)
        *_, batch = eval_batches(load_data(cfg), "test", model.max_history, 256, cfg.eval.exclude_history)
        calls[role] = (model, batch)

    def once(role: str, rows: slice) -> tuple[float, float]:
        """(seconds for the user vectors, seconds for them + the top-10)"""
        model, batch = calls[role]
        start = time.perf_counter()
        ts = None if batch.timestamps is None else batch.timestamps[rows]
        qt = None if batch.query_time is None else batch.query_time[rows]
        users = model.user_vectors(batch.items[rows], ts, qt)
        encoded = time.perf_counter()
        model.topk(users, 10, batch.exclude[rows])
        return encoded - start, time.perf_counter() - start

    warm = 3
    single, per_batch, encoder = ({role: [] for role in calls} for _ in range(3))
    for i in range(repeats + warm):
        for role, (_, batch) in calls.items():
            _, b1 = once(role, slice(i % len(batch.items), i % len(batch.items) + 1))
            enc, b256 = once(role, slice(None))
            if i >= warm:
                single[role].append(b1)
                per_batch[role].append(b256 / len(batch.items))
                encoder[role].append(enc / len(batch.items))
    ms = lambda values: 1000 * statistics.median(values)  # noqa: E731
    return {role: (ms(single[role]), ms(per_batch[role]), ms(encoder[role])) for role in calls}


def median_epoch_seconds(folders: list[Path]) -> float:
    secs = [json.loads(line)["seconds"] for f in folders for line in (f / "log.jsonl").read_text().splitlines()]
    return statistics.median(secs)


def measure(out: Path, role: str, seeds: list[int]) -> dict:
    folders = [out / f"{role}-s{s}" for s in seeds if (out / f"{role}-s{s}" / "metrics.json").exists()]
    metrics = [json.loads((f / "metrics.json").read_text()) for f in folders]
    tests = [m["test"] for m in metrics]
    row = {"role": role, "runs": len(folders)}
    for key in ("ndcg@10", "hr@10"):
        row[key] = mean_se([t[key] for t in tests])
    row["valid_ndcg@10"] = mean_se([m["valid"]["ndcg@10"] for m in metrics])  # of the selected epochs
    row["user_se"] = user_se(folders[0])
    model, _, _ = load_model(folders[0] / "best")
    row["parameters"] = parameter_counts(model)
    row["layers"] = model.config.num_layers
    row["s_per_epoch"] = median_epoch_seconds(folders)
    row["latency_folder"] = folders[0]
    return row


# ---- the table -----------------------------------------------------------------------------------

def cell(row: dict, key: str) -> str:
    m, se = row[key]
    return f"{m:.4f} ± {se:.4f}" if not math.isnan(se) else f"{m:.4f} ± {row['user_se'][key]:.4f}u"


def valid(row: dict) -> str:
    m, se = row["valid_ndcg@10"]
    return f"{m:.4f}" + (f" ± {se:.4f}" if not math.isnan(se) else "")


def table(name: str, rows: list[dict]) -> str:
    teacher = next(r for r in rows if r["role"] == "teacher")
    lines = [f"#### {name}", "",
             "| row | layers | runs | test NDCG@10 | test HR@10 | params non-emb / total | s/epoch | ms/user batch 1 | "
             "ms/user batch 256 | of which user vectors | speed-up vs teacher (1 / 256 / user vectors) | valid NDCG@10 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, (b1, b256, enc) = r["parameters"], r["latency_ms"]
        t1, t256, tenc = teacher["latency_ms"]
        lines.append(f"| {r['role']} | {r['layers']} | {r['runs']} | {cell(r, 'ndcg@10')} | {cell(r, 'hr@10')} | "
                     f"{p['non_embedding']:,} / {p['total']:,} | {r['s_per_epoch']:.1f} | {b1:.2f} | {b256:.3f} | "
                     f"{enc:.3f} | {t1 / b1:.1f}x / {t256 / b256:.1f}x / {tenc / enc:.1f}x | {valid(r)} |")
    return "\n".join(lines + [""] + targets(rows))


def targets(rows: list[dict]) -> list[str]:
    """The issue's three targets for each distilled row, each with the numbers it is decided on."""
    by = {r["role"]: r for r in rows}
    t, s = by["teacher"], by["scratch"]

    def se(r):  # over seeds, else over users
        return r["ndcg@10"][1] if not math.isnan(r["ndcg@10"][1]) else r["user_se"]["ndcg@10"]

    tn, sn = t["ndcg@10"][0], s["ndcg@10"][0]
    ok = lambda c: "met" if c else "NOT met"  # noqa: E731
    lines = []
    for name in DISTILLED:
        d = by[name]
        dn, diff_se = d["ndcg@10"][0], math.hypot(se(d), se(s))
        speed = (t["latency_ms"][0] / d["latency_ms"][0], t["latency_ms"][1] / d["latency_ms"][1])
        lines += [
            f"- {name} ≥ teacher − 1 s.e.: {dn:.4f} vs {tn:.4f} − {se(t):.4f}: {ok(dn >= tn - se(t))}",
            f"- {name} > scratch + 1 s.e. (of the difference): {dn - sn:+.4f} vs {diff_se:.4f}: {ok(dn - sn > diff_se)}",
            f"- {name} inference ≥ 4x faster: {speed[0]:.1f}x (batch 1), {speed[1]:.1f}x (batch 256): {ok(min(speed) >= 4)}",
        ]
    return lines + [f"- teacher vs scratch: {tn - sn:+.4f} NDCG@10 (the teacher {'beats' if tn > sn else 'does not beat'} "
                    "the small model trained alone)", ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/distill-bench")
    ap.add_argument("--datasets", nargs="+", default=["beauty", "toys"])
    ap.add_argument("--backbones", nargs="+", default=["hstu", "sasrec"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    ap.add_argument("--set", nargs="*", default=[], help="overrides for every run (recorded in the header)")
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per latency figure")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for training and latency (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out, sections = Path(args.out), []
    for dataset in args.datasets:
        for backbone in args.backbones:
            folder = out / f"{dataset}-{backbone}"
            train_rows(folder, dataset, backbone, args.seeds, args.set)
            rows = [measure(folder, role, args.seeds) for role in ROLES]
            latency = latencies_ms({r["role"]: r.pop("latency_folder") for r in rows}, args.repeats)
            for r in rows:
                r["latency_ms"] = latency[r["role"]]
            clean = json.loads(json.dumps(rows).replace("NaN", "null"))  # strict JSON: one seed has no s.e. over seeds
            (folder / "table.json").write_text(json.dumps(clean, indent=1))
            sections.append(table(f"{dataset} / {backbone}", rows))
    header = (f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} / {torch.get_num_threads()} threads, torch "
              f"{torch.__version__}; seeds {args.seeds}; overrides: {' '.join(args.set) or 'none'}.\n")
    text = header + "\n" + "\n".join(sections)
    (out / "distill.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
