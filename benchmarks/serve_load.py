"""Load test of ``genrec serve`` with locust (headless, loopback only, bounded in time and count):
requests/s, p50/p95/p99 latency, errors and the server's peak RSS, for several numbers of
concurrent users, micro-batching on vs off, in one run; and a soak mode (RSS growth over time).

    pip install 'genrec[serve]' locust psutil
    python benchmarks/serve_load.py runs/beauty-hstu/best --users 1,8,32,128 --seconds 30 \\
        --out benchmarks/serve_load.json                                   # the table, ~5 minutes
    python benchmarks/serve_load.py runs/beauty-hstu/best --soak 600 --users 32   # 10-minute soak
    python benchmarks/serve_load.py CKPT --users 1,8 --seconds 3 --max-requests 200 # smoke test

For each mode (``batching``: micro-batching, 2 ms wait, batches up to 64; ``per-request``:
``--no-batching``) one server process is started on a free 127.0.0.1 port (``--workers``,
``--threads``), warmed up, then for each user count locust runs for ``--seconds`` (or until
``--max-requests`` requests, whichever comes first) with every user posting /v1/recommend back to
back (no think time: the user count is the concurrency). Request bodies: ``--bodies`` random
histories of 1..max_history catalogue items with hourly timestamps (and feedback for unified
checkpoints), k=10, history excluded; the same bodies for every run. RSS is the server process's
(plus its workers'), sampled every 0.1 s. Locust runs on the same machine as the server and
takes CPU from it: compare modes within one run, on an otherwise idle machine. From the server's
``/metrics``, each row also gives the model thread's requests per pass, the share of the run it was
busy (near 1: it bounds the throughput) and the share of that busy time it computed rather than
waited (for the GIL, which it shares with the event loop, or for a core).

Targets on the project's 2-core machine: 0 errors at every level; with batching >= 3x the
per-request throughput at 32 users with p99 < 50 ms; soak at 32 users: 0 errors, RSS growth < 5%.

This file is also the locustfile (the ``RecommendUser`` class below; locust imports it with
``$GENREC_LOAD_BODIES`` pointing at the bodies).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BODIES_ENV, LIMIT_ENV = "GENREC_LOAD_BODIES", "GENREC_LOAD_MAX_REQUESTS"

# ---- the locustfile part (imported by locust in its own process) -----------------------------------
if os.environ.get(BODIES_ENV):
    import itertools

    from locust import FastHttpUser, events, task

    _BODIES = json.loads(Path(os.environ[BODIES_ENV]).read_text())
    _LIMIT = int(os.environ.get(LIMIT_ENV, "0"))
    _SENT = itertools.count(1)

    class RecommendUser(FastHttpUser):
        """One concurrent client: POST /v1/recommend back to back (no wait between requests).
        FastHttpUser (geventhttpclient): several times less client CPU per request than HttpUser,
        which matters when the load generator shares the server's cores."""

        def on_start(self) -> None:
            self.rng = random.Random(id(self))
            token = os.environ.get("GENREC_API_TOKEN")
            self.headers = {"Authorization": f"Bearer {token}"} if token else {}

        @task
        def recommend(self) -> None:
            if _LIMIT and next(_SENT) > _LIMIT:
                self.environment.runner.quit()
                return
            body = self.rng.choice(_BODIES)
            with self.client.post("/v1/recommend", json=body, headers=self.headers, catch_response=True) as r:
                if r.status_code != 200:
                    r.failure(f"{r.status_code}: {r.text[:200]}")

    @events.init.add_listener
    def _quiet(environment, **_):
        environment.stop_timeout = 5


# ---- the driver ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_bodies(checkpoint: str, n: int, seed: int = 0) -> list[dict]:
    """Random histories over the checkpoint's catalogue, shaped as the model needs them."""
    from genrec import Recommender

    rec = Recommender.load(checkpoint)
    rng = random.Random(seed)
    bodies = []
    for _ in range(n):
        length = rng.randint(1, rec.model.max_history)
        body = {"history": [rng.choice(rec.item_ids) for _ in range(length)], "k": 10,
                "timestamps": [1_300_000_000 + 3600 * i for i in range(length)]}
        if rec.reads_feedback:
            body["feedback"] = [rng.randint(0, 1) for _ in range(length)]
        bodies.append(body)
    return bodies


class Server:
    """``genrec serve`` in a subprocess on a free loopback port, with an RSS sampler."""

    def __init__(self, checkpoint: str, batching: bool, workers: int, threads: int, extra: list[str]):
        import psutil

        self.port = free_port()
        cmd = [sys.executable, "-m", "genrec.cli", "serve", checkpoint, "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", str(workers), "--log-level", "warning", *(["--threads", str(threads)] if threads else []),
               *extra]
        if not batching:
            cmd.append("--no-batching")
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log)
        self.ps = psutil.Process(self.proc.pid)
        self.peak, self.samples, self._stop = 0, [], threading.Event()
        self._wait_ready()
        threading.Thread(target=self._sample, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss(self) -> int:
        import psutil

        total = 0
        for p in [self.ps, *self.ps.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            r = self.rss()
            self.peak = max(self.peak, r)
            self.samples.append((time.monotonic(), r))

    def _wait_ready(self, seconds: float = 300) -> None:
        import urllib.request

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise SystemExit(f"genrec serve exited {self.proc.returncode}:\n{self.log.read()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise SystemExit("genrec serve did not become ready")

    def reset_peak(self) -> None:
        self.peak = self.rss()

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server and its worker processes so far."""
        import psutil

        total = 0.0
        for p in [self.ps, *self.ps.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def model_counters(self) -> dict[str, float]:
        """The model thread's totals so far from /metrics (summed over workers): passes, requests
        in them, wall and CPU seconds."""
        import urllib.request

        names = {"genrec_batch_size_count": "passes", "genrec_batch_size_sum": "requests",
                 "genrec_batch_seconds_sum": "wall", "genrec_batch_cpu_seconds_total": "cpu"}
        token = os.environ.get("GENREC_API_TOKEN")
        ask = urllib.request.Request(self.url + "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
        with urllib.request.urlopen(ask, timeout=10) as r:
            text = r.read().decode()
        out = dict.fromkeys(names.values(), 0.0)
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in names:
                out[names[name]] += float(value)
        return out

    def stop(self) -> None:
        self._stop.set()
        self.proc.terminate()
        self.proc.wait(timeout=60)


def run_locust(url: str, users: int, seconds: float, max_requests: int, bodies: Path, workdir: Path) -> dict:
    """One headless locust run; its totals from locust's JSON stats."""
    out = workdir / f"u{users}-{time.monotonic_ns()}"
    env = {**os.environ, BODIES_ENV: str(bodies), LIMIT_ENV: str(max_requests)}
    cmd = ["locust", "-f", __file__, "--headless", "--host", url, "-u", str(users), "-r", str(users),
           "--run-time", f"{max(1, int(seconds))}s", "--json-file", str(out), "--only-summary", "--loglevel", "WARNING"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # locust's own CPU (a waited-for child)
    stats = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else []
    n = sum(s["num_requests"] for s in stats)
    if n == 0:
        raise SystemExit(f"locust made no requests (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    times: dict[float, int] = {}
    for s in stats:
        for ms, count in s["response_times"].items():
            times[float(ms)] = times.get(float(ms), 0) + count
    span = max(s["last_request_timestamp"] for s in stats) - min(s["start_time"] for s in stats)
    return {
        "users": users, "requests": n, "errors": sum(s["num_failures"] for s in stats), "rps": round(n / max(span, 1e-9), 1),
        "p50_ms": percentile(times, 0.50), "p95_ms": percentile(times, 0.95), "p99_ms": percentile(times, 0.99),
        "mean_ms": round(sum(s["total_response_time"] for s in stats) / n, 2),
        "client_cpu_ms_per_request": round(1000 * (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / n, 3),
    }


def percentile(hist: dict[float, int], q: float) -> float:
    """The q-quantile of locust's response-time histogram {ms (rounded as locust does): count}."""
    total, seen = sum(hist.values()), 0
    for ms in sorted(hist):
        seen += hist[ms]
        if seen >= q * total:
            return ms
    return max(hist)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--users", default="1,8,32,128", help="comma-separated concurrent users")
    ap.add_argument("--seconds", type=float, default=30, help="per user count and mode")
    ap.add_argument("--max-requests", type=int, default=100_000, help="per run: stop after this many requests")
    ap.add_argument("--modes", default="batching,per-request")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per server worker (default: genrec serve's, 1)")
    ap.add_argument("--bodies", type=int, default=2000, help="distinct request bodies")
    ap.add_argument("--warmup", type=float, default=3, help="seconds of load before each mode's runs")
    ap.add_argument("--soak", type=float, default=0, help="instead: one batching run of this many seconds at --users")
    ap.add_argument("--serve-args", default="", help="extra `genrec serve` arguments, e.g. '--index faiss-hnsw'")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="genrec-load-"))
    bodies = workdir / "bodies.json"
    bodies.write_text(json.dumps(make_bodies(args.checkpoint, args.bodies)))
    users = [int(u) for u in args.users.split(",")]
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpus": os.cpu_count(), "runs": []}
    extra = args.serve_args.split()
    if args.soak:
        result["soak"] = soak(args, users[0], bodies, workdir, extra)
    else:
        for mode in args.modes.split(","):
            server = Server(args.checkpoint, mode == "batching", args.workers, args.threads, extra)
            try:
                run_locust(server.url, max(users), args.warmup, args.max_requests, bodies, workdir)  # warm-up
                for u in users:
                    server.reset_peak()
                    cpu, model = server.cpu_seconds(), server.model_counters()
                    row = run_locust(server.url, u, args.seconds, args.max_requests, bodies, workdir)
                    row |= {"mode": mode, "peak_rss_mb": round(server.peak / 2**20, 1),
                            "server_cpu_ms_per_request": round(1000 * (server.cpu_seconds() - cpu) / row["requests"], 3)}
                    row |= model_thread(model, server.model_counters(), row["requests"] / max(row["rps"], 1e-9))
                    result["runs"].append(row)
                    print(json.dumps(row), flush=True)
            finally:
                server.stop()
        print_table(result["runs"])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def soak(args, users: int, bodies: Path, workdir: Path, extra: list[str]) -> dict:
    """One long batching run: errors, and RSS after warm-up vs at the end (mean of the last 10 s)."""
    server = Server(args.checkpoint, True, args.workers, args.threads, extra)
    try:
        run_locust(server.url, users, args.warmup, args.max_requests, bodies, workdir)
        start_rss = server.rss()
        row = run_locust(server.url, users, args.soak, 10**9, bodies, workdir)
        end = [r for t, r in server.samples if t > server.samples[-1][0] - 10]
        end_rss = sum(end) / len(end)
    finally:
        server.stop()
    row |= {"start_rss_mb": round(start_rss / 2**20, 1), "end_rss_mb": round(end_rss / 2**20, 1),
            "rss_growth_pct": round(100 * (end_rss - start_rss) / start_rss, 2), "peak_rss_mb": round(server.peak / 2**20, 1)}
    print(json.dumps(row), flush=True)
    return row


def model_thread(before: dict[str, float], after: dict[str, float], seconds: float) -> dict:
    """The model thread over a run: requests per pass, the share of the run it was busy (summed
    over workers) and the share of its busy time spent computing (the rest: waiting for the GIL
    or a core)."""
    d = {k: after[k] - before[k] for k in after}
    return {"mean_batch": round(d["requests"] / max(d["passes"], 1), 1), "model_busy": round(d["wall"] / seconds, 2),
            "model_cpu_share": round(d["cpu"] / max(d["wall"], 1e-9), 2)}


def print_table(runs: list[dict]) -> None:
    print("\n| mode | users | requests | errors | req/s | p50 ms | p95 ms | p99 ms | peak RSS MB | server CPU ms/req | "
          "locust CPU ms/req | requests/pass | model thread busy | its CPU share |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['mode']} | {r['users']} | {r['requests']} | {r['errors']} | {r['rps']} | {r['p50_ms']} | "
              f"{r['p95_ms']} | {r['p99_ms']} | {r['peak_rss_mb']} | {r['server_cpu_ms_per_request']} | {r['client_cpu_ms_per_request']} | "
              f"{r.get('mean_batch', '')} | {r.get('model_busy', '')} | {r.get('model_cpu_share', '')} |")


if __name__ == "__main__":
    main()
