"""genrec command line: a dispatch table from subcommand to a typed function.

    genrec train CONFIG [key=value ...] [--out DIR] [--resume]
    genrec eval CKPT [--split valid|test]
    genrec recommend CKPT --history 12,7,33 [-k 10]
    genrec rank CKPT --history 12,7,33 --feedback 1,0,1 --candidates 5,9,40
    genrec scale SWEEP.yaml --out DIR [--only hstu,sasrec]
    genrec prepare CONFIG [key=value ...]
    genrec datasets

Results go to stdout as JSON; progress and messages to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from genrec import jsonio
from genrec.errors import GenrecError


def cmd_train(config: str | None, overrides: list[str], out: str | None, resume: bool) -> dict:
    """Prepare the data if needed, train, select the best epoch on validation, test it.

    Writes OUT/metrics.json, OUT/best/ (checkpoint), OUT/last/ (resumable state), OUT/log.jsonl.
    With --resume, continues the run in --out from its last finished epoch (its saved config is used).
    """
    from genrec.config import load_config
    from genrec.experiments.run import train

    if config and "=" in config:  # argparse hands the first override to CONFIG when CONFIG is left out
        config, overrides = None, [config, *overrides]
    if resume:
        if config:
            raise GenrecError("with --resume the run's saved config.yaml is used; give overrides only")
        if not out:
            raise GenrecError("--resume needs --out DIR of the run to continue")
        saved = Path(out) / "config.yaml"
        if not saved.exists():
            raise GenrecError(f"{out}: no config.yaml; nothing to resume")
        cfg = load_config(saved, overrides)
    else:
        if not config:
            raise GenrecError("train needs a CONFIG file")
        cfg = load_config(config, overrides)
        out = out or f"runs/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 owns the run folder
        print(f"run folder: {out}", file=sys.stderr)
    return train(cfg, out, resume=resume)


def cmd_eval(checkpoint: str, overrides: list[str], split: str) -> dict:
    """Re-evaluate a checkpoint on its dataset (full catalogue, same protocol as training).

    Overrides apply to the saved experiment's data and eval sections, e.g. data.source=PATH
    when the data has moved, or eval.exclude_history=none for another protocol.
    """
    from genrec.checkpoint import load_model
    from genrec.config import experiment_from_dict
    from genrec.data.prepare import load_prepared, prepare
    from genrec.training.tasks import build_task

    model, _, experiment = load_model(checkpoint)
    bad = [o for o in overrides if not o.startswith(("data.", "eval."))]
    if bad:
        raise GenrecError(f"eval takes data.* and eval.* overrides only, got {bad}")
    cfg = experiment_from_dict(experiment, overrides)
    data = load_prepared(prepare(cfg.data))
    if data.num_items != model.num_items:
        raise GenrecError(f"{checkpoint}: model has {model.num_items} items, the prepared data {data.num_items}")
    result = build_task(cfg, data).evaluate(model, split, "cpu")  # retrieval, ranking or both, as trained
    return {"split": split, "protocol": result["protocol"], split: result["metrics"]}


def _feedback(text: str | None) -> list[list[float]] | None:
    return [[float(v) for v in f.split(":")] for f in text.split(",")] if text else None


def cmd_recommend(
    checkpoint: str, history: str, k: int, feedback: str | None, timestamps: str | None, query_time: int | None,
    keep_history: bool, ignore_unknown: bool,
) -> dict:
    """Top-k items for a history of raw item ids (comma-separated, oldest first). Unified models
    also read the feedback of each history item (--feedback)."""
    from genrec.recommender import Recommender

    rec = Recommender.load(checkpoint)
    items = [h.strip() for h in history.split(",") if h.strip()]
    ts = [int(t) for t in timestamps.split(",")] if timestamps else None
    top = rec.recommend(items, k, ts, query_time, exclude_history=not keep_history, ignore_unknown=ignore_unknown, feedback=_feedback(feedback))
    return {"history": items, "k": k, "items": [{"item": i, "score": round(s, 6)} for i, s in top]}


def cmd_rank(
    checkpoint: str, history: str, feedback: str | None, candidates: str, timestamps: str | None, query_time: int | None, ignore_unknown: bool
) -> dict:
    """Score candidate items (raw ids) for a history with its feedback, through the ranking head
    (M-FALCON: all candidates in one pass over the encoded history). Prints one score per
    candidate and task (probabilities for binary tasks)."""
    from genrec.recommender import Recommender

    rec = Recommender.load(checkpoint)
    items = [h.strip() for h in history.split(",") if h.strip()]
    fb = _feedback(feedback)
    cands = [c.strip() for c in candidates.split(",") if c.strip()]
    ts = [int(t) for t in timestamps.split(",")] if timestamps else None
    scores = rec.rank(items, cands, fb, ts, query_time, ignore_unknown=ignore_unknown)
    return {"history": items, "tasks": rec.task_names, "candidates": [{"item": c, **s} for c, s in zip(cands, scores)]}


def cmd_scale(sweep: str, out: str, only: str | None) -> dict:
    """Train a scaling grid (backbones x depth x width x data fraction) from a sweep file.

    Writes OUT/results.csv (one row per point: backbone, layers, width, parameters, FLOPs, seconds,
    valid/test metrics), OUT/fits.csv (power law per backbone, with R²) and OUT/*.png. Finished
    points are never rerun; an interrupted point resumes from its last epoch. See configs/sweeps/.
    """
    from genrec.experiments.scaling import run_sweep

    return run_sweep(sweep, out, [b.strip() for b in only.split(",")] if only else None)


def cmd_prepare(config: str, overrides: list[str]) -> dict:
    """Read, filter and index a dataset into the canonical Parquet form; print where and its stats."""
    from genrec.config import load_config
    from genrec.data.prepare import prepare

    folder = prepare(load_config(config, overrides).data)
    return {"folder": str(folder), "stats": json.loads((folder / "stats.json").read_text())}


def cmd_datasets() -> dict:
    """List registered datasets with their download address and default preprocessing."""
    from genrec.data.download import DATASETS

    return {
        name: {"format": s.format, "url": s.url, "description": s.description,
               "min_user_count": s.min_user_count, "min_item_count": s.min_item_count}
        for name, s in DATASETS.items()
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genrec", description="Generative recommendation: train, evaluate and query sequence models.")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn) -> argparse.ArgumentParser:
        doc = fn.__doc__ or ""
        sp = sub.add_parser(name, help=doc.split("\n")[0], description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(fn=fn)
        return sp

    sp = add("train", cmd_train)
    sp.add_argument("config", nargs="?", help="experiment YAML (e.g. configs/beauty/hstu.yaml)")
    sp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3 model.num_layers=4")
    sp.add_argument("--out", help="run folder (default runs/<config-name>-<timestamp>)")
    sp.add_argument("--resume", action="store_true", help="continue the run in --out")

    sp = add("eval", cmd_eval)
    sp.add_argument("checkpoint", help="checkpoint folder, e.g. runs/<run>/best")
    sp.add_argument("overrides", nargs="*", help="data.*/eval.* overrides, e.g. data.source=PATH")
    sp.add_argument("--split", choices=["valid", "test"], default="test")

    sp = add("recommend", cmd_recommend)
    sp.add_argument("checkpoint")
    sp.add_argument("--history", required=True, help="comma-separated raw item ids, oldest first")
    sp.add_argument("-k", type=int, default=10)
    sp.add_argument("--feedback", help="unified models: one value per history item (tasks separated by ':'), e.g. 1,0,1")
    sp.add_argument("--timestamps", help="comma-separated unix seconds, one per history item (models with a time bias)")
    sp.add_argument("--query-time", type=int, help="request time in unix seconds (default: the last history time)")
    sp.add_argument("--keep-history", action="store_true", help="allow items of the history in the results")
    sp.add_argument("--ignore-unknown", action="store_true", help="drop unknown item ids instead of failing")

    sp = add("rank", cmd_rank)
    sp.add_argument("checkpoint")
    sp.add_argument("--history", required=True, help="comma-separated raw item ids, oldest first")
    sp.add_argument("--feedback", help="one value per history item, comma-separated (tasks within an item separated by ':'), e.g. 1,0,1")
    sp.add_argument("--candidates", required=True, help="comma-separated raw item ids to score")
    sp.add_argument("--timestamps", help="comma-separated unix seconds, one per history item (models with a time bias)")
    sp.add_argument("--query-time", type=int, help="request time in unix seconds (default: the last history time)")
    sp.add_argument("--ignore-unknown", action="store_true", help="drop unknown history item ids instead of failing")

    sp = add("scale", cmd_scale)
    sp.add_argument("sweep", help="sweep YAML (e.g. configs/sweeps/ml-100k.yaml)")
    sp.add_argument("--out", required=True, help="sweep folder (results.csv, fits.csv, plots, one run folder per point)")
    sp.add_argument("--only", help="comma-separated backbone labels to run now (the tables use every finished point)")

    sp = add("prepare", cmd_prepare)
    sp.add_argument("config")
    sp.add_argument("overrides", nargs="*")

    add("datasets", cmd_datasets)
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    fn = args.pop("fn")
    args.pop("command")
    try:
        result = fn(**args)
    except (GenrecError, FileNotFoundError, ValueError) as exc:
        print(f"genrec: error: {exc}", file=sys.stderr)
        return 2
    print(jsonio.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
