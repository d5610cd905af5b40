"""Synthetic interaction log shaped like MovieLens-20M, for data-preparation benchmarks.

    python benchmarks/synth_log.py --out /tmp/synth20m.parquet [--rows 20000000]

138,493 users and 26,744 items (MovieLens-20M's counts); per-user lengths log-normal (median ~70,
long tail), rescaled to exactly --rows; items drawn from a Zipf-like popularity (exponent 1.0);
(fewer users for small --rows); timestamps increase within a user, ratings on MovieLens's half-star scale. Columns:
user_id (int64), movie_id (int64), timestamp (int64, seconds), rating (float64). Rows are
shuffled so the file is not in (user, time) order. Fully vectorised (NumPy + Arrow).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def generate(rows: int, users: int = 138_493, items: int = 26_744, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    users = min(users, max(1, rows // 50))  # small test logs keep ~50+ interactions per user
    lengths = rng.lognormal(mean=4.2, sigma=1.0, size=users)
    lengths = np.maximum(1, np.floor(lengths / lengths.sum() * rows)).astype(np.int64)
    lengths[: rows - int(lengths.sum())] += 1  # make the total exact (the shortfall is < users)
    user = np.repeat(np.arange(1, users + 1, dtype=np.int64), lengths)
    popularity = 1.0 / np.arange(1, items + 1) ** 1.0
    item = rng.choice(np.arange(1, items + 1, dtype=np.int64), size=rows, p=popularity / popularity.sum())
    gaps = rng.exponential(3600.0, size=rows).astype(np.int64) + 1
    start = np.repeat(rng.integers(789_652_009, 1_400_000_000, size=users), lengths)
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    cum = np.cumsum(gaps)
    ts = start + cum - cum[first]  # increasing within each user
    rating = rng.integers(1, 11, size=rows) / 2.0
    order = rng.permutation(rows)
    return pa.table({"user_id": user[order], "movie_id": item[order], "timestamp": ts[order], "rating": rating[order]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rows", type=int, default=20_000_000)
    args = ap.parse_args()
    start = time.perf_counter()
    table = generate(args.rows)
    pq.write_table(table, args.out, row_group_size=1 << 20)
    print(f"{args.out}: {table.num_rows} rows in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
