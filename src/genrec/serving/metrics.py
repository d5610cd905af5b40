"""Prometheus metrics of one service process (``GET /metrics``), in their own registry.

- ``genrec_requests_total{route, method, status}``: every answered request;
- ``genrec_request_seconds{route}``: latency histogram, from the first byte in to the answer;
- ``genrec_errors_total{route, code}``: 4xx/5xx answers by error code (``unknown_items``, ...);
- ``genrec_batch_size``: requests per forward pass of the micro-batcher (1 each without batching);
- ``genrec_reloads_total{outcome}`` and ``genrec_model_info{weights_sha256, index, kind}``.

Routes are labelled by their template (``/v1/items/{item_id}``), never by the raw path, so the
number of series stays bounded. With ``--workers N`` each process keeps its own counts and
``/metrics`` shows the process that answered it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("genrec_requests", "Requests answered", ["route", "method", "status"], registry=r)
        self.latency = Histogram("genrec_request_seconds", "Request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("genrec_errors", "Error answers by code", ["route", "code"], registry=r)
        self.batch_size = Histogram("genrec_batch_size", "Requests per forward pass", buckets=BATCH_BUCKETS, registry=r)
        self.reloads = Counter("genrec_reloads", "Checkpoint reloads", ["outcome"], registry=r)
        self.model = Gauge("genrec_model_info", "The checkpoint being served", ["weights_sha256", "index", "kind"], registry=r)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def error(self, route: str, code: str) -> None:
        self.errors.labels(route, code).inc()

    def serving(self, digest: str, index: str, kind: str) -> None:
        self.model.clear()
        self.model.labels(digest[:12], index, kind).set(1)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
