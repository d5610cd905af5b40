"""Markdown tables from a finished ``genrec scale`` folder (for RESULTS.md).

    python benchmarks/scale_report.py runs/scale-ml-100k
    python benchmarks/scale_report.py benchmarks/scaling/ml-100k --replot   # fits.csv + plots again from results.csv

Prints, per backbone, the test and validation NDCG@10 of every grid point (columns = layers x
width, with non-embedding parameters), the change from the smallest to the largest model, and the
fitted power-law exponents against parameters and FLOPs with their R² (from fits.csv).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--metric", default="ndcg@10")
    ap.add_argument("--replot", action="store_true", help="rewrite fits.csv and the plots from results.csv (no training)")
    args = ap.parse_args()
    folder = Path(args.folder)
    if args.replot:
        from genrec.experiments.scaling.fits import fits as fit_rows
        from genrec.experiments.scaling.report import plot, plot_data, write_csv

        def number(v: str):
            try:
                return int(v)
            except ValueError:
                return float(v) if v not in ("", "None") else None

        rows = [{k: v if k in ("backbone", "model") else number(v) for k, v in r.items()} for r in csv.DictReader(open(folder / "results.csv"))]
        found = fit_rows(rows, args.metric)
        write_csv(folder / "fits.csv", found)
        for path in [*plot(rows, found, args.metric, folder), plot_data(rows, args.metric, folder)]:
            if path is not None:
                print(f"wrote {path}")
    rows = list(csv.DictReader(open(folder / "results.csv")))
    m = args.metric
    # the test fits (fits.csv also holds validation fits, metric valid_<m>; older files only test ones)
    fits = {(f["group"], f["x"]): f for f in csv.DictReader(open(folder / "fits.csv")) if f.get("metric", f"test_{m}") == f"test_{m}"}
    sizes = sorted({(int(r["layers"]), int(r["width"])) for r in rows})
    head = " | ".join(f"L{L} D{D}" for L, D in sizes)
    print(f"| backbone | {head} | largest - smallest | b (params), R² | b (FLOPs), R² | train s (all points) |")
    print("|---|" + "---|" * (len(sizes) + 4))
    for backbone in dict.fromkeys(r["backbone"] for r in rows):
        by = {(int(r["layers"]), int(r["width"])): r for r in rows if r["backbone"] == backbone}
        cells = []
        for s in sizes:
            r = by.get(s)
            cells.append("-" if r is None else f"{float(r['test_' + m]):.4f} ({float(r['valid_' + m]):.4f})")
        done = [by[s] for s in sizes if s in by]
        small, large = min(done, key=lambda r: int(r["params_nonembedding"])), max(done, key=lambda r: int(r["params_nonembedding"]))
        delta = float(large["test_" + m]) - float(small["test_" + m])
        fp, ff = fits.get((backbone, "params_nonembedding")), fits.get((backbone, "flops"))
        fit_text = lambda f: "-" if f is None else f"{float(f['b']):+.3f}, {float(f['r2']):.2f}"  # noqa: E731
        secs = sum(float(r["seconds"]) for r in done)
        print(f"| {backbone} | {' | '.join(cells)} | {delta:+.4f} | {fit_text(fp)} | {fit_text(ff)} | {secs:.0f} |")
    params = {}
    for r in rows:
        params.setdefault((int(r["layers"]), int(r["width"])), set()).add(int(r["params_nonembedding"]))
    print("\nNon-embedding parameters per size (min-max over backbones): " + ", ".join(
        f"L{L} D{D}: {min(p):,}-{max(p):,}" for (L, D), p in sorted(params.items())))


if __name__ == "__main__":
    main()
