"""``genrec serve``: the app under uvicorn, in one process or several.

One worker (the default): the checkpoint is loaded once, here, and SIGHUP reloads it in place.
``--workers N``: uvicorn's supervisor starts N processes that each load the checkpoint (settings
travel as JSON in ``$GENREC_SERVE_SETTINGS``) and share the port; SIGHUP to the supervisor, or
``POST /v1/admin/reload`` to any worker (which signals the supervisor), then replaces the workers
one by one, each new one ready before the old one stops (uvicorn's rolling restart, which finishes
the old worker's requests first). ``/metrics`` sums every worker (prometheus-client's
multiprocess mode over a temporary folder, removed when the server stops). A FAISS index is built
once here before the workers start, so they find it cached beside the checkpoint.

Each worker runs torch with one thread unless ``--threads`` says otherwise: a service's forward
passes are small, and several threads per pass spend more in synchronisation than they gain as
soon as anything else wants the cores (measured on the project's 2-core machine under load: a
[32 x 64] x [64 x 12101] matmul + top-k took 3.4 ms with 1 thread, 33 ms with 2). Scale with
``--workers`` instead.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import sys
import tempfile

import torch

from genrec.serving import require
from genrec.serving.service import ServeSettings, load_service

SETTINGS_ENV = "GENREC_SERVE_SETTINGS"
THREADS_ENV = "GENREC_SERVE_THREADS"
GRACEFUL_SHUTDOWN_SECONDS = 30
"""A stopping worker's requests still in progress after this long are cancelled (uvicorn's
``timeout_graceful_shutdown``): a client that sends its headers and never its body cannot keep
a worker, or a rolling reload, from finishing."""


def app_from_env():
    """uvicorn factory for worker processes: the app over ``$GENREC_SERVE_SETTINGS``."""
    from genrec.serving.app import create_app

    set_threads(int(os.environ.get(THREADS_ENV, "1")))
    return create_app(ServeSettings.from_json(os.environ[SETTINGS_ENV]))


def set_threads(threads: int) -> None:
    """Threads of torch and, when installed, FAISS (both OpenMP) in this process."""
    torch.set_num_threads(threads)
    try:
        import faiss
    except ImportError:
        return
    faiss.omp_set_num_threads(threads)


def http_protocol():
    """uvicorn's httptools protocol with a graceful end for idle connections (a request on its
    way when a worker stops is answered: :mod:`genrec.serving.protocol`), or uvicorn's choice
    where httptools is not installed."""
    if importlib.util.find_spec("httptools") is None:
        return "auto"  # (uvicorn's h11 protocol: idle connections closed at once on shutdown)
    from genrec.serving.protocol import DrainingHttpToolsProtocol

    return DrainingHttpToolsProtocol


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, threads: int = 0,
          log_level: str = "info") -> dict:
    """Run the service until interrupted (Ctrl-C / SIGTERM); returns what was served."""
    require()
    import uvicorn

    from genrec.serving.app import create_app

    if workers < 1:
        raise ValueError(f"--workers {workers} must be >= 1")
    threads = threads or 1
    service = load_service(settings)  # fail here, once, on a bad checkpoint; builds and saves a FAISS index
    where = f"http://{host}:{port}"
    print(f"genrec serve: {service.checkpoint} ({service.kind}, {service.rec.model.num_items} items, index "
          f"{settings.index.kind}) on {where} with {workers} worker(s); web page {where}/, API docs {where}/docs",
          file=sys.stderr)
    logs = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    logs["handlers"]["access"]["stream"] = "ext://sys.stderr"  # stdout is for the command's JSON
    common = {"host": host, "port": port, "log_level": log_level, "log_config": logs, "http": http_protocol(),
              "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS}
    if workers == 1:
        set_threads(threads)
        uvicorn.run(create_app(settings, service), **common)
    else:
        from genrec.serving.app import WORKERS_ENV
        from genrec.serving.metrics import MULTIPROC_ENV

        del service
        shared = tempfile.mkdtemp(prefix="genrec-serve-metrics-")  # the workers' Prometheus values, summed by /metrics
        # the workers inherit these (uvicorn spawns them from this process); restored afterwards, so
        # nothing later in this process believes it is a worker
        env = {SETTINGS_ENV: settings.to_json(), THREADS_ENV: str(threads), WORKERS_ENV: str(workers), MULTIPROC_ENV: shared}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            uvicorn.run("genrec.serving.server:app_from_env", factory=True, workers=workers,
                        timeout_worker_healthcheck=120, **common)  # a new worker loads torch + the model
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            shutil.rmtree(shared, ignore_errors=True)
    return {"served": settings.checkpoint, "host": host, "port": port, "workers": workers}
