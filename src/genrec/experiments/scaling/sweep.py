"""A sweep file, its grid of points, one point's experiment and run, and the whole sweep."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from genrec import jsonio
from genrec.config import ExperimentConfig, apply_overrides, load_config
from genrec.errors import ConfigError
from genrec.experiments.scaling.fits import fits
from genrec.experiments.scaling.flops import count_parameters, training_flops
from genrec.experiments.scaling.report import plot, plot_data, write_csv

BASE_MODEL_FIELDS = ("max_seq_len", "dropout", "l2_normalize", "num_heads", "item_features", "user_features", "behaviour_embedding")
"""Model fields a point takes from the base config; the rest of ``model`` is the backbone's own."""


@dataclass
class SweepConfig:
    base: str
    """Experiment config every point starts from (path relative to the sweep file)."""
    backbones: dict[str, dict]
    """Backbone label -> ``model.*`` fields (``name`` plus variant switches)."""
    layers: list[int]
    """Depths to train."""
    widths: list[int]
    """Widths (``model.embedding_dim``) to train."""
    data_fractions: list[float] = field(default_factory=lambda: [1.0])
    """Shares of the training users (``train.data_fraction``)."""
    overrides: list[str] = field(default_factory=list)
    """Dotted overrides applied to every point (e.g. ``train.epochs=40``)."""
    metric: str = "ndcg@10"
    """Metric plotted and fitted (validation picks each point's epoch by ``eval.select_metric``)."""
    heads: int = 0
    """Attention heads per point (0 = keep the base config's ``model.num_heads``)."""

    def __post_init__(self) -> None:
        if not self.backbones or not self.layers or not self.widths:
            raise ConfigError("a sweep needs backbones, layers and widths")
        for label, fields in self.backbones.items():
            if "name" not in fields:
                raise ConfigError(f"sweep backbone {label!r} needs a model name (name: hstu|sasrec|gpt|llama)")

    @classmethod
    def load(cls, path: str | Path) -> tuple["SweepConfig", Path]:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such sweep file")
        raw = yaml.safe_load(path.read_text()) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        if set(raw) - known:
            raise ConfigError(f"{path}: unknown sweep keys {sorted(set(raw) - known)}; known: {sorted(known)}")
        return cls(**raw), path.parent

    def points(self) -> list[dict]:
        return [
            {"backbone": b, "layers": L, "width": D, "data_fraction": f}
            for f in self.data_fractions for b in self.backbones for L in self.layers for D in self.widths
        ]


def point_name(p: dict) -> str:
    return f"{p['backbone']}-L{p['layers']}-D{p['width']}-f{p['data_fraction']:g}"


def point_config(sweep: SweepConfig, base_dir: Path, p: dict) -> ExperimentConfig:
    """The experiment of one grid point: base config + the point's model fields + sweep overrides."""
    raw = load_config(base_dir / sweep.base).to_dict()
    model = {k: raw["model"][k] for k in BASE_MODEL_FIELDS if k in raw["model"]}
    model.update(sweep.backbones[p["backbone"]])
    model.update(num_layers=p["layers"], embedding_dim=p["width"])
    if sweep.heads:
        model["num_heads"] = sweep.heads
    raw = apply_overrides({**raw, "model": model}, sweep.overrides)
    raw["train"]["data_fraction"] = p["data_fraction"]
    raw["name"] = point_name(p)
    return ExperimentConfig.from_dict(raw)


def run_point(sweep: SweepConfig, base_dir: Path, p: dict, out: Path) -> dict:
    """Train one point (or resume / reuse it) and return its results row."""
    from genrec.experiments.run import make_trainer
    from genrec.experiments.run_folder import claim

    folder = out / "points" / point_name(p)
    row_file = folder / "row.json"
    if row_file.exists():
        return json.loads(row_file.read_text())
    cfg = point_config(sweep, base_dir, p)
    trainer = make_trainer(cfg, folder)
    with claim(folder, resume=True):  # two sweeps never train one point at once; a killed point resumes (or restarts cleanly)
        done = folder / "metrics.json"
        started = (folder / "config.yaml").exists()  # an earlier attempt at this point
        result = json.loads(done.read_text()) if done.exists() else trainer.fit(resume=started)
    counts = count_parameters(trainer.model)
    row = {
        **p, "model": cfg.model.name, **counts,
        "flops": training_flops(cfg, counts["params_nonembedding"], trainer.batches, result["epochs_run"], trainer.model.num_items),
        "seconds": result["train_seconds"], "epochs_run": result["epochs_run"], "best_epoch": result["best_epoch"],
        **{f"valid_{k}": v for k, v in result["valid"].items()}, **{f"test_{k}": v for k, v in result["test"].items()},
    }
    jsonio.write_json(row_file, row, indent=None)  # atomic; a NaN metric becomes null
    return row


def run_sweep(sweep_file: str | Path, out: str | Path, only: list[str] | None = None, overrides: list[str] | None = None) -> dict:
    """Run every point not yet finished (optionally only the backbones in ``only``; ``overrides``
    added after the sweep's own), then write results.csv, fits.csv and the plots from all
    finished points."""
    sweep, base_dir = SweepConfig.load(sweep_file)
    if any(o.split("=", 1)[0].strip() == "train.data_fraction" for o in overrides or []):
        raise ConfigError("train.data_fraction is the sweep's data_fractions axis (each point sets its own): list the "
                          "fractions in the sweep file instead")
    sweep.overrides = [*sweep.overrides, *(overrides or [])]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    earlier = out / "sweep.yaml"
    if earlier.exists() and (old := yaml.safe_load(earlier.read_text()) or {}).get("overrides") != sweep.overrides:
        raise ConfigError(f"{out} holds a sweep with overrides {old.get('overrides')}, not {sweep.overrides}: "
                          "use another --out (finished points are reused, so they must be the same experiment)")
    (out / "sweep.yaml").write_text(yaml.safe_dump(dataclasses.asdict(sweep), sort_keys=False))
    rows = []
    for p in sweep.points():
        if only and p["backbone"] not in only:
            continue
        print(f"scale: {point_name(p)}", file=sys.stderr)
        rows.append(run_point(sweep, base_dir, p, out))
    finished = [json.loads(f.read_text()) for f in sorted((out / "points").glob("*/row.json"))]
    write_csv(out / "results.csv", finished)
    fit_rows = fits(finished, sweep.metric)
    write_csv(out / "fits.csv", fit_rows)
    plots = [str(p) for p in plot(finished, fit_rows, sweep.metric, out)] if finished else []
    if finished and (data_plot := plot_data(finished, sweep.metric, out)) is not None:
        plots.append(str(data_plot))
    return {"points": len(finished), "ran": len(rows), "results": str(out / "results.csv"), "fits": fit_rows, "plots": plots}
