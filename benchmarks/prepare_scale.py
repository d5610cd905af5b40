"""Data preparation at MovieLens-20M scale: a synthetic 20M-interaction log (benchmarks/synth_log.py)
prepared into training sequences by ``genrec prepare`` (Arrow compute + NumPy, no Python loops
over rows), in a fresh child process whose wall time and peak RSS are reported.

    python benchmarks/prepare_scale.py [--rows 20000000] [--dir /tmp/genrec-prepare-bench]

Targets on the 2-core machine: under 60 s and under 4 GB peak memory. The child also loads the
prepared sequences back (``load_prepared``), timed separately. The log is generated once and reused.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

CHILD = r"""
import json, sys, time
from genrec.config import load_config
from genrec.data.prepare import load_prepared, prepare
cfg = load_config(sys.argv[1])
start = time.perf_counter()
folder = prepare(cfg.data)
mid = time.perf_counter()
data = load_prepared(folder)
print(json.dumps({"prepare_s": mid - start, "load_s": time.perf_counter() - mid, "users": data.num_users,
                  "items": data.num_items, "interactions": int(len(data.items))}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000_000)
    ap.add_argument("--dir", default="/tmp/genrec-prepare-bench")
    args = ap.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"synth-{args.rows}.parquet"
    if not log.exists():
        subprocess.run([sys.executable, str(Path(__file__).parent / "synth_log.py"), "--out", str(log), "--rows", str(args.rows)], check=True)
    cache = folder / "cache"
    subprocess.run(["rm", "-rf", str(cache)], check=True)  # always prepare from scratch
    cfg = {"data": {"dataset": "custom", "source": str(log), "format": "parquet", "cache_dir": str(cache),
                    "columns": {"user": "user_id", "item": "movie_id", "timestamp": "timestamp", "rating": "rating"}}}
    (folder / "prepare.yaml").write_text(yaml.safe_dump(cfg))
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder / "prepare.yaml")], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print("| rows | users | items | prepare s | load back s | child wall s (incl. imports) | peak RSS GB |\n|---|---|---|---|---|---|---|")
    print(f"| {r['interactions']:,} | {r['users']:,} | {r['items']:,} | {r['prepare_s']:.1f} | {r['load_s']:.1f} | {wall:.1f} | {peak_gb:.2f} |")


if __name__ == "__main__":
    main()
