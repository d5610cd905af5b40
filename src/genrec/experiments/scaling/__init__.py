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
finished point), ``DIR/fits.csv`` (per backbone: validation and test metric = a · x^b, by least squares in
log-log space, with R² in that space, x = non-embedding parameters or training FLOPs) and
``DIR/<metric>_vs_params.png`` / ``DIR/<metric>_vs_flops.png``.

Modules: :mod:`.sweep` (the sweep file, its grid, one point's config and run, the whole sweep),
:mod:`.flops` (parameter counts and the training-FLOPs estimate), :mod:`.fits` (power laws),
:mod:`.report` (plots and CSV files).
"""

from genrec.experiments.scaling.sweep import SweepConfig, point_config, point_name, run_point, run_sweep

__all__ = ["SweepConfig", "point_config", "point_name", "run_point", "run_sweep"]
