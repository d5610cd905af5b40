"""Power laws fitted to a sweep's finished points: validation and test metric = a · x^b per backbone, x = non-embedding
parameters or training FLOPs, by least squares in log-log space."""

from __future__ import annotations

import math

import numpy as np


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


def group_rows(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows by backbone (and by data fraction when the sweep has several): one line, one fit each."""
    several = len({r["data_fraction"] for r in rows}) > 1
    out: dict[str, list[dict]] = {}
    for r in rows:
        key = f"{r['backbone']} (f={r['data_fraction']:g})" if several else r["backbone"]
        out.setdefault(key, []).append(r)
    return out


def fits(rows: list[dict], metric: str) -> list[dict]:
    """One fits.csv row per group, split (validation, test) and axis (params_nonembedding, flops)
    that has a fit."""
    out = []
    for label, grp in group_rows(rows).items():
        for split in ("valid", "test"):
            key = f"{split}_{metric}"
            pts = [r for r in grp if r.get(key) is not None]
            y = np.array([r[key] for r in pts], dtype=float)
            for axis in ("params_nonembedding", "flops"):
                fit = power_law_fit(np.array([r[axis] for r in pts], dtype=float), y)
                if fit:
                    out.append({"group": label, "x": axis, "metric": key, "points": len(pts), **fit})
    return out
