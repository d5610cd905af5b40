"""Scaling sweeps (``genrec scale SWEEP.yaml --out DIR``): train a grid of backbones × depth ×
width (× training-data fraction), record size, compute, time and metrics, fit power laws.

A sweep file names a base experiment config, the backbones (each a set of ``model.*`` fields) and
the grid::

    base: ../ml-100k/hstu.yaml          # relative to the sweep file
    overrides: [train.epochs=40]        # applied to every point
    backbones:
      hstu: {name: hstu}
      sasrec: {name: sasrec, residual: pre_ln, position_bias: true}
    layers: [1, 2, 4]
    widths: [32, 64, 128]
    data_fractions: [1.0]
    metric: ndcg@10

Output: ``DIR/points/<point>/`` (an ordinary run folder per point; a finished point is never
rerun, an interrupted one resumes from its ``last/`` checkpoint), ``DIR/results.csv`` (one row per
finished point), ``DIR/fits.csv`` (per backbone: test metric = a · x^b, fitted by least squares in
log-log space, with R² in that space, x = non-embedding parameters or training FLOPs) and
``DIR/<metric>_vs_params.png`` / ``DIR/<metric>_vs_flops.png``.

Training FLOPs are an estimate, 3 × forward (forward + backward), per trained target token:
2·N_ne (every non-embedding weight once) + 4·L·D·c̄ (attention scores and mixing, c̄ = mean
number of keys a token attends to) + 2·D·S (scoring S items: 1 + negatives, or the catalogue).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from genrec.config import ExperimentConfig, apply_overrides
from genrec.errors import ConfigError


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
    """The experiment of one grid point: base config + sweep overrides + the point's model fields."""
    base = yaml.safe_load((base_dir / sweep.base).read_text()) or {}
    model = {k: v for k, v in (base.get("model") or {}).items() if k in ("max_seq_len", "dropout", "l2_normalize", "num_heads")}
    model.update(sweep.backbones[p["backbone"]])
    model.update(num_layers=p["layers"], embedding_dim=p["width"])
    if sweep.heads:
        model["num_heads"] = sweep.heads
    raw = apply_overrides({**base, "model": model}, sweep.overrides)
    raw.setdefault("train", {})["data_fraction"] = p["data_fraction"]
    raw["name"] = point_name(p)
    return ExperimentConfig.from_dict(raw)


def count_parameters(model) -> dict[str, int]:
    """Total and non-embedding parameters (item table and absolute position table excluded)."""
    total = sum(p.numel() for p in model.parameters())
    backbone = getattr(model, "backbone", model)
    emb = backbone.item_embedding.weight.numel()
    if getattr(backbone, "pos_embedding", None) is not None:
        emb += backbone.pos_embedding.weight.numel()
    return {"params": total, "params_nonembedding": total - emb}


def step_flops(cfg: ExperimentConfig, params_nonembedding: int, tokens: float, pairs: float) -> float:
    """Model FLOPs of training on ``tokens`` targets whose sequences hold ``pairs`` attended
    (query, key) pairs (Σ n(n+1)/2 = tokens · c̄): 3 × (2·N_ne·T + 4·L·D·pairs + 2·D·S·T)."""
    t, m = cfg.train, cfg.model
    scored = m.num_items if t.loss == "full_softmax" else (1 + t.num_negatives)
    return 3.0 * (2 * params_nonembedding * tokens + 4 * m.num_layers * m.embedding_dim * pairs + 2 * m.embedding_dim * scored * tokens)


def training_flops(cfg: ExperimentConfig, params_nonembedding: int, batches, epochs: int) -> float:
    """Estimated training FLOPs (module docstring) for ``epochs`` over ``batches``' windows."""
    n = (batches.ends - batches.starts - 1).astype(np.float64)  # inputs per window
    pairs = float((n * (n + 1) / 2).sum())  # causal: a token sees itself and all before
    return step_flops(cfg, params_nonembedding, float(n.sum()), pairs) * epochs


def run_point(sweep: SweepConfig, base_dir: Path, p: dict, out: Path) -> dict:
    """Train one point (or resume / reuse it) and return its results row."""
    from genrec.training.trainer import Trainer

    folder = out / "points" / point_name(p)
    row_file = folder / "row.json"
    if row_file.exists():
        return json.loads(row_file.read_text())
    cfg = point_config(sweep, base_dir, p)
    trainer = Trainer(cfg, folder)
    resume = (folder / "last" / "state.json").exists()
    result = trainer.fit(resume=resume) if not (folder / "metrics.json").exists() else json.loads((folder / "metrics.json").read_text())
    counts = count_parameters(trainer.model)
    row = {
        **p, "model": cfg.model.name, **counts,
        "flops": training_flops(cfg, counts["params_nonembedding"], trainer.batches, result["epochs_run"]),
        "seconds": result["train_seconds"], "epochs_run": result["epochs_run"], "best_epoch": result["best_epoch"],
        **{f"valid_{k}": v for k, v in result["valid"].items()}, **{f"test_{k}": v for k, v in result["test"].items()},
    }
    row_file.write_text(json.dumps(row))
    return row


def power_law_fit(x: np.ndarray, y: np.ndarray) -> dict | None:
    """Least squares of log y = log a + b log x. Returns {a, b, r2} (R² in log space), or None
    with fewer than 2 distinct positive points."""
    ok = (x > 0) & (y > 0)
    x, y = np.log(x[ok]), np.log(y[ok])
    if len(np.unique(x)) < 2:
        return None
    b, loga = np.polyfit(x, y, 1)
    resid = y - (loga + b * x)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return {"a": float(math.exp(loga)), "b": float(b), "r2": r2}


def _groups(rows: list[dict]) -> dict[str, list[dict]]:
    several = len({r["data_fraction"] for r in rows}) > 1
    out: dict[str, list[dict]] = {}
    for r in rows:
        key = f"{r['backbone']} (f={r['data_fraction']:g})" if several else r["backbone"]
        out.setdefault(key, []).append(r)
    return out


def fits(rows: list[dict], metric: str) -> list[dict]:
    out = []
    for label, grp in _groups(rows).items():
        y = np.array([r[f"test_{metric}"] for r in grp], dtype=float)
        for axis in ("params_nonembedding", "flops"):
            fit = power_law_fit(np.array([r[axis] for r in grp], dtype=float), y)
            if fit:
                out.append({"group": label, "x": axis, "metric": f"test_{metric}", "points": len(grp), **fit})
    return out


def plot(rows: list[dict], fit_rows: list[dict], metric: str, out: Path) -> list[Path]:
    """Test metric vs non-embedding parameters and vs training FLOPs, log-log, one line per backbone
    with its fitted power law (dashed) and R² in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for axis, xlabel, suffix in (("params_nonembedding", "non-embedding parameters", "params"), ("flops", "training FLOPs (estimate)", "flops")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, (label, grp) in enumerate(sorted(_groups(rows).items())):
            grp = sorted(grp, key=lambda r: r[axis])
            x = np.array([r[axis] for r in grp], dtype=float)
            y = np.array([r[f"test_{metric}"] for r in grp], dtype=float)
            color = f"C{i % 10}"
            fit = next((f for f in fit_rows if f["group"] == label and f["x"] == axis), None)
            text = f"{label}" + (f": b={fit['b']:.3f}, R²={fit['r2']:.2f}" if fit else "")
            ax.plot(x, y, "o-", color=color, label=text, alpha=0.8)
            if fit:
                xs = np.geomspace(x.min(), x.max(), 50)
                ax.plot(xs, fit["a"] * xs ** fit["b"], "--", color=color, alpha=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"test {metric}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{metric.replace('@', '_at_')}_vs_{suffix}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def write_csv(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def run_sweep(sweep_file: str | Path, out: str | Path, only: list[str] | None = None) -> dict:
    """Run every point not yet finished (optionally only the backbones in ``only``), then
    write results.csv, fits.csv and the plots from all finished points."""
    sweep, base_dir = SweepConfig.load(sweep_file)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
    return {"points": len(finished), "ran": len(rows), "results": str(out / "results.csv"), "fits": fit_rows, "plots": plots}
