"""A run's training curves as one PNG: the training loss per epoch and each validation metric per
evaluated epoch, read from ``log.jsonl``. The trainer redraws it after every epoch. matplotlib is
optional (the ``scale`` and ``dev`` extras): without it the plot is skipped with one line.
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
