"""Prometheus metrics of one service process (``GET /metrics``), in their own registry.

- ``genrec_requests_total{route, method, status}``: every answered request;
- ``genrec_request_seconds{route}``: latency histogram, from the first byte in to the answer;
- ``genrec_errors_total{route, code}``: 4xx/5xx answers by error code (``unknown_items``, ...);
- ``genrec_batch_size``: requests per forward pass of the micro-batcher (1 each without batching);
- ``genrec_batch_seconds``: the model thread's wall time per pass (forward and search), and
  ``genrec_batch_cpu_seconds_total`` its CPU time: the rate of the first sum is the share of time
  the model thread is busy (near 1: it bounds the throughput), the ratio of the two sums the share
  of that time it computes rather than waits (for the interpreter lock, or the cores);
- ``genrec_reloads_total{outcome}`` and ``genrec_model_info{weights_sha256, index, kind}``.

Routes are labelled by their template (``/v1/items/{item_id}``), never by the raw path, so the
number of series stays bounded. With ``--workers N`` the workers write their values into one
folder (prometheus-client's multiprocess mode, ``$PROMETHEUS_MULTIPROC_DIR``, set by ``genrec
serve``), so whichever worker answers ``/metrics`` reports the whole service: counts and histograms
summed over every worker that ever ran (restarted ones included), and ``genrec_model_info`` per
live worker (label ``pid``), so a rolling reload shows which workers serve which weights.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.shared = os.environ.get(MULTIPROC_ENV)  # several workers: values live in files there
        if self.shared:
            _forget_dead_workers(Path(self.shared))
        self.requests = Counter("genrec_requests", "Requests answered", ["route", "method", "status"], registry=r)
        self.latency = Histogram("genrec_request_seconds", "Request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("genrec_errors", "Error answers by code", ["route", "code"], registry=r)
        self.batch_size = Histogram("genrec_batch_size", "Requests per forward pass", buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("genrec_batch_seconds", "Model-thread wall seconds per forward pass (search included)",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.batch_cpu = Counter("genrec_batch_cpu_seconds", "Model-thread CPU seconds in forward passes", registry=r)
        self.reloads = Counter("genrec_reloads", "Checkpoint reloads", ["outcome"], registry=r)
        self.model = Gauge("genrec_model_info", "The checkpoint being served", ["weights_sha256", "index", "kind"], registry=r,
                           multiprocess_mode="liveall")
        self._served: tuple[str, str, str] | None = None

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def batch(self, size: int, seconds: float, cpu_seconds: float) -> None:
        """One forward pass of ``size`` requests on the model thread."""
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.batch_cpu.inc(cpu_seconds)

    def error(self, route: str, code: str) -> None:
        self.errors.labels(route, code).inc()

    def serving(self, digest: str, index: str, kind: str) -> None:
        if not self.shared:
            self.model.clear()
        elif self._served is not None:  # set to 0, not removed: a worker's shared file keeps every series it wrote
            self.model.labels(*self._served).set(0)
        self._served = (digest[:12], index, kind)
        self.model.labels(*self._served).set(1)

    def render(self) -> tuple[bytes, str]:
        if not self.shared:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        everyone = CollectorRegistry()
        multiprocess.MultiProcessCollector(everyone)
        return generate_latest(everyone), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """A worker stopping: its live gauges leave the shared folder (its counts stay)."""
        if self.shared:
            multiprocess.mark_process_dead(os.getpid())


def _forget_dead_workers(folder: Path) -> None:
    """Drop the live gauges of workers that are gone without saying so (killed, crashed)."""
    for file in folder.glob("gauge_live*_*.db"):
        pid = int(file.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, str(folder))
        except PermissionError:
            pass  # alive, someone else's
