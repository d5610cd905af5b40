"""genrec command line: a dispatch table from subcommand to a typed function.

    genrec train CONFIG [key=value ...] [--out DIR] [--resume | --overwrite]
    genrec distill STUDENT_CONFIG --teacher CKPT [key=value ...] [--out DIR] [--resume | --overwrite]
    genrec eval CKPT [--split valid|test]
    genrec recommend CKPT --history 12,7,33 [-k 10]
    genrec rank CKPT --history 12,7,33 --feedback 1,0,1 --candidates 5,9,40
    genrec serve CKPT [--port 8000] [--workers N] [--index exact|faiss-flat|faiss-ivf|faiss-hnsw|faiss-pq]
    genrec scale SWEEP.yaml [KEY=VALUE ...] --out DIR [--only hstu,sasrec]
    genrec tune CONFIG [key=value ...] --space SPACE.yaml --trials N [--out DIR] [--storage URL]
    genrec prepare CONFIG [key=value ...]
    genrec datasets

Results go to stdout as JSON; progress and messages to stderr. (Over 350 lines on purpose: ten
subcommands, each a thin typed function beside its arguments, so the whole command line reads in
one file; the work is in the library.)
"""

from __future__ import annotations

import argparse
import json
import inspect
import os
import re
import sys
import time
from importlib import metadata
from pathlib import Path

from genrec import jsonio
from genrec.errors import GenrecError


def cmd_train(config: str | None, overrides: list[str], out: str | None, resume: bool, overwrite: bool) -> dict:
    """Prepare the data if needed, train, select the best epoch on validation, test it.

    Writes OUT/metrics.json, OUT/best/ (checkpoint), OUT/last/ (resumable state), OUT/log.jsonl
    and OUT/curves.png. A folder that holds a run is refused unless --resume continues it from
    its last finished epoch (with its saved config) or --overwrite deletes it first; a folder
    another training is writing into is refused (OUT/.lock).
    """
    from genrec.config import load_config, run_name
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
        out = out or f"runs/{run_name(cfg)}-{time.strftime('%Y%m%d-%H%M%S')}"
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 owns the run folder
        print(f"run folder: {out}", file=sys.stderr)
    return train(cfg, out, resume=resume, overwrite=overwrite)


def cmd_distill(config: str | None, overrides: list[str], teacher: str | None, out: str | None, resume: bool,
                overwrite: bool) -> dict:
    """Distil a trained teacher checkpoint into a shallower student (SLMRec, layer-aligned).

    CONFIG is the student's experiment: the teacher's data, the same backbone family with fewer
    layers; its distill section sets the blocks, the compared positions and the loss weights
    (README "Distillation"). Writes what train writes; OUT/best/ is the student alone (an ordinary
    checkpoint for eval, recommend and serve), OUT/steps.jsonl each loss term per step, and
    OUT/metrics.json adds the teacher's metrics on the same split. --resume continues the run in
    --out with its saved config (and teacher).
    """
    from genrec.config import experiment_from_dict, load_config
    from genrec.experiments.distill import distill

    if config and "=" in config:  # argparse hands the first override to CONFIG when CONFIG is left out
        config, overrides = None, [config, *overrides]
    if resume:
        if config:
            raise GenrecError("with --resume the run's saved config.yaml is used; give overrides only")
        if not out or not (Path(out) / "config.yaml").exists():
            raise GenrecError("--resume needs --out DIR of a distillation run (with its config.yaml)")
        cfg = load_config(Path(out) / "config.yaml", overrides)
        if teacher and str(Path(teacher).resolve()) != cfg.distill.teacher:
            raise GenrecError(f"--resume: the run distils {cfg.distill.teacher}, not {teacher}")
    else:
        if not config:
            raise GenrecError("distill needs the student's CONFIG file")
        cfg = load_config(config, overrides)
        if teacher:
            raw = cfg.to_dict()
            raw["distill"]["teacher"] = str(Path(teacher).resolve())
            cfg = experiment_from_dict(raw)
        out = out or f"runs/{cfg.name}-distill-{time.strftime('%Y%m%d-%H%M%S')}"
    if os.environ.get("RANK", "0") == "0":
        print(f"run folder: {out}", file=sys.stderr)
    return distill(cfg, out, resume=resume, overwrite=overwrite)


def cmd_eval(checkpoint: str, overrides: list[str], split: str) -> dict:
    """Re-evaluate a checkpoint on its dataset (full catalogue, same protocol as training).

    The prepared data is found by its key in the data cache, so the raw file is not needed again
    once prepared. Overrides apply to the saved experiment's data and eval sections, e.g.
    data.source=PATH when the data has moved, or eval.exclude_history=none for another protocol.
    """
    from genrec.checkpoint import load_model
    from genrec.config import experiment_from_dict
    from genrec.data.prepare import load_prepared, prepare
    from genrec.training.tasks import build_task

    model, item_ids, experiment = load_model(checkpoint)
    bad = [o for o in overrides if not o.startswith(("data.", "eval."))]
    if bad:
        raise GenrecError(f"eval takes data.* and eval.* overrides only, got {bad}")
    cfg = experiment_from_dict(experiment, overrides)
    folder = prepare(cfg.data)
    data = load_prepared(folder)
    if list(data.item_ids) != list(item_ids):
        raise GenrecError(
            f"{checkpoint}: the model's {len(item_ids)} items are not the {data.num_items} items of the prepared data "
            f"{folder}; the data changed since training (point data.source=PATH at the file it was trained on)"
        )
    result = build_task(cfg, data).evaluate(model, split, "cpu")  # retrieval, ranking or both, as trained
    return {"split": split, "protocol": result["protocol"], split: result["metrics"]}


def _feedback(text: str | None) -> list[list[float]] | None:
    return [[float(v) for v in f.split(":")] for f in text.split(",")] if text else None


def cmd_recommend(
    checkpoint: str, history: str, k: int, feedback: str | None, timestamps: str | None, query_time: int | None,
    keep_history: bool, ignore_unknown: bool, user_attributes: str | None = None, domain: str | None = None,
) -> dict:
    """Top-k items for a history of raw item ids (comma-separated, oldest first). Unified models
    also read the feedback of each history item (--feedback); models with user features the
    user's attributes (--user-attributes gender=F,age=25-34)."""
    from genrec.recommender import Recommender

    rec = Recommender.load(checkpoint)
    items = [h.strip() for h in history.split(",") if h.strip()]
    ts = [int(t) for t in timestamps.split(",")] if timestamps else None
    attributes = [a.strip() for a in user_attributes.split(",") if a.strip()] if user_attributes else None
    top = rec.recommend(items, k, ts, query_time, exclude_history=not keep_history, ignore_unknown=ignore_unknown, feedback=_feedback(feedback),
                        user_attributes=attributes, domain=domain)
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


def cmd_serve(
    checkpoint: str, host: str, port: int, workers: int, threads: int, index: str, nlist: int, nprobe: int, hnsw_m: int,
    ef_search: int, pq_m: int, refine: int, no_batching: bool, max_batch: int, batch_wait_ms: float, metadata: str | None, index_dir: str | None,
    max_body_bytes: int, max_history: int, log_level: str,
) -> dict:
    """Serve a checkpoint over HTTP until interrupted: POST /v1/recommend, POST /v1/rank,
    GET /v1/items, GET /v1/model, health checks, /metrics (Prometheus), a web page at / and the
    API docs at /docs. Needs pip install 'genrec[serve]'.

    Concurrent /v1/recommend requests are micro-batched into one forward pass (--no-batching:
    one pass each). With GENREC_API_TOKEN set, /v1 and /metrics need 'Authorization: Bearer
    TOKEN'. POST /v1/admin/reload or SIGHUP swaps in the checkpoint again (e.g. after retraining
    into the same run folder) without failing requests in flight.
    """
    from genrec.serving import require

    require()
    from genrec.serving.index import IndexOptions
    from genrec.serving.server import serve
    from genrec.serving.service import Limits, ServeSettings

    settings = ServeSettings(
        checkpoint, IndexOptions(index, nlist, nprobe, hnsw_m, ef_search=ef_search, pq_m=pq_m, refine=refine), metadata, index_dir, not no_batching,
        max_batch, batch_wait_ms, Limits(max_body_bytes=max_body_bytes, max_history=max_history),
    )
    return serve(settings, host, port, workers, threads, log_level)


def cmd_scale(sweep: str, overrides: list[str], out: str, only: str | None) -> dict:
    """Train a scaling grid (backbones x depth x width x data fraction) from a sweep file.

    Writes OUT/results.csv (one row per point: backbone, layers, width, parameters, FLOPs, seconds,
    valid/test metrics), OUT/fits.csv (power law per backbone, with R²) and OUT/*.png. Finished
    points are never rerun; an interrupted point resumes from its last epoch. KEY=VALUE overrides
    are added to the sweep's own (e.g. train.seed=43 for a second seed into another --out) and
    recorded in OUT/sweep.yaml. With several data fractions, also OUT/<metric>_vs_data.png.
    See configs/sweeps/.
    """
    from genrec.experiments.scaling import run_sweep

    return run_sweep(sweep, out, [b.strip() for b in only.split(",")] if only else None, overrides)


def cmd_tune(
    config: str, overrides: list[str], space: str, trials: int, out: str | None, storage: str | None, study: str | None,
    timeout: float | None, pruner: str, warmup: int, seed: int | None,
) -> dict:
    """Search hyper-parameters on validation (Optuna: TPE, pruning), then test the best config once.

    Each trial is a run folder OUT/trials/NNNN that never reads the test split. The study lives in
    OUT/study.db (or --storage, any Optuna RDB URL, shared by several tune processes); running the
    same command again continues it up to N finished trials, resuming an interrupted trial from
    its last epoch. When the study is finished: OUT/best.yaml (the best trial's config, with the
    commands that reproduce it), OUT/final/metrics.json (its best checkpoint tested once) and the
    study's plots. See configs/spaces/ and README "Tuning".
    """
    from genrec.experiments.tune import TuneSettings, tune

    settings = TuneSettings(trials, storage, study, timeout, pruner, warmup, seed)
    return tune(config, overrides, space, out, settings)


def cmd_prepare(config: str, overrides: list[str]) -> dict:
    """Read, filter and index a dataset into the canonical Parquet form; print where and its stats."""
    from genrec.config import load_config
    from genrec.data.prepare import prepare

    folder = prepare(load_config(config, overrides).data)
    return {"folder": str(folder), "stats": json.loads((folder / "stats.json").read_text())}


def cmd_datasets() -> dict:
    """List registered datasets with their download address and default preprocessing, and
    ``custom``: your own log (README "Your own data")."""
    from genrec.data.download import CUSTOM, DATASETS

    return {
        **{name: {"format": s.format, "url": s.url, "description": s.description,
                  "min_user_count": s.min_user_count, "min_item_count": s.min_item_count} for name, s in DATASETS.items()},
        "custom": CUSTOM,
    }


def first_sentence(doc: str) -> str:
    """A docstring's first sentence, on one line (the one-line help of a subcommand)."""
    paragraph = " ".join(doc.split("\n\n")[0].split())
    return re.split(r"(?<=[.!?])\s+(?=[A-Z])", paragraph)[0]


def _version() -> str:
    try:
        return metadata.version("genrec")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        from genrec import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genrec", description="Generative recommendation: train, evaluate and query sequence models.")
    sub = p.add_subparsers(dest="command", required=True)

    p.add_argument("--version", action="version", version=f"genrec {_version()}")

    def add(name: str, fn) -> argparse.ArgumentParser:
        doc = inspect.cleandoc(fn.__doc__ or "")
        sp = sub.add_parser(name, help=first_sentence(doc), description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(fn=fn)
        return sp

    sp = add("train", cmd_train)
    sp.add_argument("config", nargs="?", help="experiment YAML (e.g. configs/beauty/hstu.yaml)")
    sp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3 model.num_layers=4")
    sp.add_argument("--out", help="run folder (default runs/<config-name>-<timestamp>)")
    sp.add_argument("--resume", action="store_true", help="continue the run in --out (from the start if it never finished an epoch)")
    sp.add_argument("--overwrite", action="store_true", help="delete the run in --out first, then train into it")

    sp = add("distill", cmd_distill)
    sp.add_argument("config", nargs="?", help="the student's experiment YAML (e.g. configs/beauty/distill-hstu.yaml)")
    sp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.num_layers=2 distill.blocks=2")
    sp.add_argument("--teacher", help="the teacher's checkpoint folder, e.g. runs/<teacher-run>/best (default: distill.teacher)")
    sp.add_argument("--out", help="run folder (default runs/<config-name>-distill-<timestamp>)")
    sp.add_argument("--resume", action="store_true", help="continue the distillation in --out")
    sp.add_argument("--overwrite", action="store_true", help="delete the run in --out first, then train into it")

    sp = add("eval", cmd_eval)
    sp.add_argument("checkpoint", help="checkpoint folder, e.g. runs/<run>/best")
    sp.add_argument("overrides", nargs="*", help="data.*/eval.* overrides, e.g. data.source=PATH")
    sp.add_argument("--split", choices=["valid", "test"], default="test")

    sp = add("recommend", cmd_recommend)
    sp.add_argument("checkpoint")
    sp.add_argument("--history", required=True, help="comma-separated raw item ids, oldest first")
    sp.add_argument("-k", type=int, default=10)
    sp.add_argument("--feedback", help="unified models: one value per history item (tasks separated by ':'), e.g. 1,0,1; "
                    "like + rating models: 1:5,0:2 or the ratings alone, 5,2")
    sp.add_argument("--timestamps", help="comma-separated unix seconds, one per history item (models with a time bias)")
    sp.add_argument("--query-time", type=int, help="request time in unix seconds (default: the last history time)")
    sp.add_argument("--keep-history", action="store_true", help="allow items of the history in the results")
    sp.add_argument("--ignore-unknown", action="store_true", help="drop unknown item ids (and unknown user attributes) instead of failing")
    sp.add_argument("--user-attributes", help="models with user features: comma-separated field=value tokens, e.g. gender=F,age=25-34")
    sp.add_argument("--domain", help="multi-domain models: the domain to recommend from (other domains' ids as <domain>:<id>)")

    sp = add("rank", cmd_rank)
    sp.add_argument("checkpoint")
    sp.add_argument("--history", required=True, help="comma-separated raw item ids, oldest first")
    sp.add_argument("--feedback", help="one value per history item, comma-separated (tasks within an item separated by ':'), e.g. 1,0,1; "
                    "like + rating models: 1:5,0:2 or the ratings alone, 5,2")
    sp.add_argument("--candidates", required=True, help="comma-separated raw item ids to score")
    sp.add_argument("--timestamps", help="comma-separated unix seconds, one per history item (models with a time bias)")
    sp.add_argument("--query-time", type=int, help="request time in unix seconds (default: the last history time)")
    sp.add_argument("--ignore-unknown", action="store_true", help="drop unknown history item ids instead of failing")

    sp = add("serve", cmd_serve)
    sp.add_argument("checkpoint", help="checkpoint folder, e.g. runs/<run>/best")
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--workers", type=int, default=1, help="processes sharing the port (each loads the model)")
    sp.add_argument("--threads", type=int, default=0, help="torch threads per worker (default 1; scale with --workers)")
    sp.add_argument("--index", choices=["exact", "faiss-flat", "faiss-ivf", "faiss-hnsw", "faiss-pq"], default="exact",
                    help="retrieval index (FAISS ones are saved beside the checkpoint, rebuilt when the weights change)")
    sp.add_argument("--nlist", type=int, default=0, help="faiss-ivf lists (default 4*sqrt(items))")
    sp.add_argument("--nprobe", type=int, default=32, help="faiss-ivf lists searched per query")
    sp.add_argument("--hnsw-m", type=int, default=32, help="faiss-hnsw links per node")
    sp.add_argument("--ef-search", type=int, default=128, help="faiss-hnsw search breadth")
    sp.add_argument("--pq-m", type=int, default=0, help="faiss-pq 4-bit sub-quantisers (default: half the width, the full width when odd)")
    sp.add_argument("--refine", type=int, default=100, help="faiss-pq candidates re-scored exactly, times k (plus the excluded items)")
    sp.add_argument("--no-batching", action="store_true", help="one forward pass per /v1/recommend request, one at a time on the model thread (no micro-batching)")
    sp.add_argument("--max-batch", type=int, default=64, help="most requests in one forward pass")
    sp.add_argument("--batch-wait-ms", type=float, default=2.0, help="longest a request waits for its batch to fill")
    sp.add_argument("--metadata", help="item metadata file with titles (CSV/JSON/Parquet, u.item, movies.dat)")
    sp.add_argument("--index-dir", help="where FAISS indexes are cached (default CHECKPOINT.index/ beside it)")
    sp.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413")
    sp.add_argument("--max-history", type=int, default=1000, help="longer histories get 422")
    sp.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                    help="uvicorn's log level (info logs every request to stderr)")

    sp = add("scale", cmd_scale)
    sp.add_argument("sweep", help="sweep YAML (e.g. configs/sweeps/ml-100k.yaml)")
    sp.add_argument("overrides", nargs="*", help="dotted overrides for every point, after the sweep's own, e.g. train.seed=43")
    sp.add_argument("--out", required=True, help="sweep folder (results.csv, fits.csv, plots, one run folder per point)")
    sp.add_argument("--only", help="comma-separated backbone labels to run now (the tables use every finished point)")

    sp = add("tune", cmd_tune)
    sp.add_argument("config", help="base experiment YAML (e.g. configs/beauty/hstu.yaml)")
    sp.add_argument("overrides", nargs="*", help="dotted overrides applied to every trial, e.g. train.epochs=60")
    sp.add_argument("--space", required=True, help="search space YAML (e.g. configs/spaces/beauty-hstu.yaml)")
    sp.add_argument("--trials", type=int, required=True, help="finished (complete or pruned) trials the study should have")
    sp.add_argument("--out", help="study folder (default runs/tune-<config-name>; the same folder continues the study)")
    sp.add_argument("--storage", help="Optuna RDB URL shared by several processes (default sqlite:///OUT/study.db)")
    sp.add_argument("--study", help="study name (default: the config's name)")
    sp.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    sp.add_argument("--pruner", choices=["median", "halving", "none"], default="median",
                    help="stop trials whose validation curve falls behind (median of finished trials, or successive halving)")
    sp.add_argument("--warmup", type=int, default=10, help="the earliest epoch at which a trial may be pruned")
    sp.add_argument("--seed", type=int, help="sampler seed (default train.seed), combined with how many processes opened the study before")

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
    except (GenrecError, OSError, ValueError) as exc:  # OSError covers FileNotFoundError and PermissionError
        print(f"genrec: error: {exc}", file=sys.stderr)
        return 2
    print(jsonio.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
