"""A run's training curves as PNGs, redrawn by the trainer after every epoch: ``curves.png`` (the
training loss per epoch and each validation metric per evaluated epoch, from ``log.jsonl``) and,
for unified models, ``weights.png`` (the loss weighter's weights, each task's loss and, with the
``gradient`` weighter, each task's gradient norm, per step, from ``steps.jsonl``). matplotlib is
optional (the ``scale`` and ``dev`` extras): without it the plots are skipped with one line.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

SHOWN = ("ndcg@10", "hr@10", "mrr", "auc", "gauc")
"""Validation metrics drawn when the log has them (the rank metrics at other cut-offs move with these)."""


def plot(log: Path, png: Path) -> bool:
    """Write ``png`` from ``log`` (one JSON line per epoch); False when matplotlib is missing."""
    new_figure = _figure_class()
    if new_figure is None:
        return False
    rows = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    evaluated = [r for r in rows if "valid" in r]
    shown = [m for m in SHOWN if any(m in r["valid"] for r in evaluated)]
    fig = new_figure(figsize=(9, 3.2), dpi=80)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.9, wspace=0.25)  # fixed: tight_layout costs a render
    ax_loss, ax_valid = fig.subplots(1, 2)
    ax_loss.plot([r["epoch"] for r in rows], [float("nan") if r["loss"] is None else r["loss"] for r in rows], marker=".")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    for metric in shown:
        points = [(r["epoch"], r["valid"][metric]) for r in evaluated if metric in r["valid"]]
        ax_valid.plot(*zip(*points), marker=".", label=metric)
    ax_valid.set(xlabel="epoch", title="validation")
    for ax in (ax_loss, ax_valid):
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
    if shown:
        ax_valid.legend(fontsize="small")
    tmp = png.with_name(png.name + ".tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(png)  # a reader never sees half a file
    return True


def plot_steps(steps: Path, png: Path) -> bool:
    """Write ``png`` from a unified run's ``steps`` log (one JSON line per step); False when
    matplotlib is missing or no step logged a weight."""
    new_figure = _figure_class()
    rows = [json.loads(line) for line in Path(steps).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "w_retrieval" in r]
    if new_figure is None or not rows:
        return False
    fig = new_figure(figsize=(9, 3.2), dpi=80)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.9, wspace=0.25)
    ax_w, ax_g = fig.subplots(1, 2)
    for key in ("w_retrieval", "w_ranking"):
        ax_w.plot(range(1, len(rows) + 1), [r[key] for r in rows], label=key[2:])
    ax_w.set(xlabel="step", title="loss weights")
    norms = [k for k in ("grad_norm_retrieval", "grad_norm_ranking") if any(k in r for r in rows)]
    shown = norms or ["retrieval_loss", "ranking_loss"]
    for key in shown:
        points = [(i, r[key]) for i, r in enumerate(rows, 1) if key in r]
        ax_g.plot(*zip(*points), label=key.replace("grad_norm_", "").replace("_loss", ""))
    ax_g.set(xlabel="step", title="gradient norm on the shared trunk" if norms else "loss", yscale="log")
    for ax in (ax_w, ax_g):
        ax.legend(fontsize="small")
    tmp = png.with_name(png.name + ".tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(png)
    return True


@functools.lru_cache(maxsize=1)
def _figure_class():
    """matplotlib's ``Figure``, or None (said once per process). A bare Figure renders with Agg
    and leaves pyplot's global backend alone (a notebook calling ``train`` keeps its own)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("genrec: matplotlib is not installed, so no curves.png is drawn (pip install matplotlib)", file=sys.stderr)
        return None
    return Figure
