"""What a sweep writes besides its run folders: log-log plots with the fitted laws, and CSV files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from genrec.experiments.scaling.fits import group_rows


def plot(rows: list[dict], fit_rows: list[dict], metric: str, out: Path) -> list[Path]:
    """Test metric vs non-embedding parameters and vs training FLOPs, log-log, one line per backbone
    with its fitted power law (dashed) and R² in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for axis, xlabel, suffix in (("params_nonembedding", "non-embedding parameters", "params"), ("flops", "training FLOPs (estimate)", "flops")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, (label, grp) in enumerate(sorted(group_rows(rows).items())):
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
    """Rows as CSV (columns: every key, in first-seen order), written atomically."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
