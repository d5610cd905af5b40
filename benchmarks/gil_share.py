"""How much a serving pass slows when another Python thread of the same process wants the GIL:
the micro-batcher's model thread against the event loop, in miniature.

    python benchmarks/gil_share.py runs/beauty-hstu/best
    python benchmarks/gil_share.py runs/beauty-hstu/best --sizes 1 16 --duty 0.003:0.003 0.0003:0.0003

For each batch size B, B of the load test's request bodies (``serve_load.make_bodies``) are
checked once (``prepare_recommend``) and then answered by ``service.search_batch`` (the forward
pass and the exact index search: what the model thread runs per pass) ``--reps`` times: alone,
then while a second thread runs pure-Python work in bursts of ``busy`` seconds separated by
``rest`` seconds of sleep (``--duty busy:rest``; a sleep releases the GIL, as the event loop's
wait for the network does). Wall and CPU (``time.thread_time``) milliseconds per pass of the
measuring thread; the competitor's share of the wall time is busy / (busy + rest) when it runs
unhindered. torch on 1 thread, as ``genrec serve`` runs it.

Each torch call releases the GIL while it computes, and the pass must take it back after each
one. A competitor that holds the GIL in bursts makes the pass wait out a burst almost every time
it lets go, so the pass's wall time grows by about the competitor's own busy time: the two run
one after the other rather than side by side.
"""

from __future__ import annotations

import argparse
import platform
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import make_bodies  # noqa: E402  (benchmarks/serve_load.py)


def competitor(busy: float, rest: float, stop: threading.Event) -> None:
    while not stop.is_set():
        until = time.perf_counter() + busy
        while time.perf_counter() < until:
            sum(range(200))  # pure Python: holds the GIL
        time.sleep(rest)


def timed(fn, reps: int) -> tuple[float, float]:
    for _ in range(5):
        fn()
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(reps):
        fn()
    return 1000 * (time.perf_counter() - wall) / reps, 1000 * (time.thread_time() - cpu) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--duty", nargs="+", default=["0.003:0.003", "0.0003:0.0003", "0.00005:0.0001"],
                    help="busy:rest seconds of the competing thread")
    ap.add_argument("--reps", type=int, default=150)
    args = ap.parse_args()

    from genrec.serving.schemas import RecommendRequest
    from genrec.serving.service import ServeSettings, load_service, prepare_recommend, search_batch

    torch.set_num_threads(1)
    svc = load_service(ServeSettings(checkpoint=args.checkpoint))
    jobs = [prepare_recommend(svc, RecommendRequest.model_validate(b)) for b in make_bodies(args.checkpoint, max(args.sizes))]
    print(f"{platform.machine()}, torch {torch.__version__}, 1 thread; checkpoint {args.checkpoint}; "
          f"search_batch (forward pass + exact search), {args.reps} passes per cell\n")
    print("| B | competitor busy / rest ms | its share | wall ms | CPU ms | wall / alone | CPU / alone |")
    print("|---|---|---|---|---|---|---|")
    for B in args.sizes:
        batch = jobs[:B]
        alone = timed(lambda: search_batch(batch), args.reps)
        print(f"| {B} | none | 0 | {alone[0]:.2f} | {alone[1]:.2f} | 1.00x | 1.00x |")
        for duty in args.duty:
            busy, rest = (float(x) for x in duty.split(":"))
            stop = threading.Event()
            thread = threading.Thread(target=competitor, args=(busy, rest, stop), daemon=True)
            thread.start()
            try:
                wall, cpu = timed(lambda: search_batch(batch), args.reps)
            finally:
                stop.set()
                thread.join()
            print(f"| {B} | {1000 * busy:g} / {1000 * rest:g} | {busy / (busy + rest):.2f} | {wall:.2f} | {cpu:.2f} | "
                  f"{wall / alone[0]:.2f}x | {cpu / alone[1]:.2f}x |")


if __name__ == "__main__":
    main()
