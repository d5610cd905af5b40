"""What a sweep writes besides its run folders: log-log plots with the fitted laws, and CSV files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from genrec.experiments.scaling.fits import group_rows


MARKERS = "osD^vP*X"


def plot(rows: list[dict], fit_rows: list[dict], metric: str, out: Path) -> list[Path]:
    """Validation (left) and test (right) metric vs non-embedding parameters and vs training FLOPs,
    log-log. One colour per backbone (and data fraction); within it one marker and one line per
    depth, joining that depth's widths in order of x, so depth and width read apart and no line
    runs back on itself. The backbone's power law over all its points is dashed, with b and R² in
    the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    depths = sorted({r["layers"] for r in rows})
    groups = sorted(group_rows(rows).items())
    for axis, xlabel, suffix in (("params_nonembedding", "non-embedding parameters", "params"), ("flops", "training FLOPs (estimate)", "flops")):
        fig, panels = plt.subplots(1, 2, figsize=(15, 5.2), sharex=True)
        handles, labels = [], []
        for ax, split in zip(panels, ("valid", "test")):
            key = f"{split}_{metric}"
            for i, (label, grp) in enumerate(groups):
                color = f"C{i % 10}"
                for depth in depths:
                    line = sorted((r for r in grp if r["layers"] == depth and r.get(key) is not None), key=lambda r: r[axis])
                    if line:
                        (h,) = ax.plot([r[axis] for r in line], [r[key] for r in line], "-", marker=MARKERS[depths.index(depth) % len(MARKERS)],
                                       color=color, alpha=0.8)
                        if split == "test":
                            handles.append(h)
                            labels.append(f"{label}, {depth} layers (widths {'/'.join(str(r['width']) for r in line)})")
                fit = next((f for f in fit_rows if f["group"] == label and f["x"] == axis and f["metric"] == key), None)
                if fit:
                    x = np.array([r[axis] for r in grp], dtype=float)
                    xs = np.geomspace(x.min(), x.max(), 50)
                    (h,) = ax.plot(xs, fit["a"] * xs ** fit["b"], "--", color=color, alpha=0.5)
                    handles.append(h)
                    labels.append(f"{label} {split} fit: b={fit['b']:+.3f}, R²={fit['r2']:.2f}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{split} {metric}")
            ax.set_title(f"{'validation' if split == 'valid' else 'test'} {metric} (each point: its best-validation epoch)", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.755, 0.5), fontsize=6, frameon=False)
        fig.tight_layout(rect=(0, 0, 0.75, 1))
        path = out / f"{metric.replace('@', '_at_')}_vs_{suffix}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_data(rows: list[dict], metric: str, out: Path) -> Path | None:
    """Validation (left) and test (right) metric vs the share of training users, one line per
    backbone and model size, for sweeps with several data fractions (else None)."""
    fractions = sorted({r["data_fraction"] for r in rows})
    if len(fractions) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({(r["backbone"], r["layers"], r["width"]) for r in rows})
    fig, panels = plt.subplots(1, 2, figsize=(12, 4.8), sharex=True)
    for ax, split in zip(panels, ("valid", "test")):
        key = f"{split}_{metric}"
        for i, (backbone, layers, width) in enumerate(sizes):
            line = sorted((r for r in rows if (r["backbone"], r["layers"], r["width"]) == (backbone, layers, width)
                           and r.get(key) is not None), key=lambda r: r["data_fraction"])
            ax.plot([r["data_fraction"] for r in line], [r[key] for r in line], "-o", color=f"C{i % 10}",
                    label=f"{backbone}, {layers} layers, width {width}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
        ax.set_xlabel("share of training users (train.data_fraction)")
        ax.set_ylabel(f"{split} {metric}")
        ax.set_title(f"{'validation' if split == 'valid' else 'test'} {metric} (each point: its best-validation epoch)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    panels[1].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    path = out / f"{metric.replace('@', '_at_')}_vs_data.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
