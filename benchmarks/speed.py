"""Training and evaluation speed per row, each row in a fresh process (so peak RSS is its own).

    GENREC_SOURCE=../shared/data python benchmarks/speed.py --rows beauty/sasrec beauty/hstu ...

Per row: 3 training epochs with the row's frozen config (the first is warm-up), then one
full-catalogue validation pass. Prints a Markdown table: the faster of training epochs 2 and 3
in seconds, training targets per second, seconds for one validation pass, peak RSS of the process.
Run it on an otherwise idle machine; compare rows of one run only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
from genrec.config import load_config
from genrec.experiments.run import make_trainer
cfg = load_config(sys.argv[1], sys.argv[3:])
tr = make_trainer(cfg, sys.argv[2])
secs = [tr.train_epoch(e)["seconds"] for e in range(3)]
start = time.perf_counter()
tr.evaluate("valid")
print(json.dumps({"epoch_s": sorted(secs[1:])[0], "tokens": tr.batches.num_tokens, "eval_s": time.perf_counter() - start,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", required=True)
    ap.add_argument("--set", nargs="*", default=[], help="overrides for every row")
    args = ap.parse_args()
    print("| row | s/epoch (train) | train targets/s | s per validation pass | peak RSS MB |\n|---|---|---|---|---|")
    for name in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(ROOT / "configs" / f"{name}.yaml"), tmp, *args.set],
                capture_output=True, text=True, check=True,
            )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {name} | {r['epoch_s']:.1f} | {r['tokens'] / r['epoch_s']:.0f} | {r['eval_s']:.1f} | {r['rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
