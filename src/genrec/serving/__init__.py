"""Serving: genrec behind HTTP, all thin layers over :class:`genrec.Recommender` (one instance per
checkpoint, shared by every request thread: it is stateless and thread-safe).

- ``app.py`` — the FastAPI routes (``/v1/recommend``, ``/v1/rank``, ``/v1/items``, ``/v1/model``,
  ``/v1/admin/reload``, health, ``/metrics``, the web page at ``/``), auth, errors;
- ``edge.py`` — the outer ASGI layer: body limit, per-request metrics, and ``POST /v1/recommend``
  answered directly (the same checks and answers as the FastAPI route, without its layers);
- ``service.py`` — one loaded checkpoint (:class:`~genrec.serving.service.Service`: Recommender,
  index, item metadata, model card) and the request logic, no HTTP; swapped whole on reload;
- ``schemas.py`` — request and response bodies (pydantic, the OpenAPI at ``/docs``);
- ``batcher.py`` — dynamic micro-batching: concurrent requests, one forward pass on the model thread;
- ``index.py`` — exact top-k or FAISS (flat / IVF / HNSW) over the item vectors, with exclusions;
- ``metadata.py`` — titles and search; ``metrics.py`` — Prometheus; ``server.py`` — uvicorn;
  ``static/`` — the page (HTML + JS, no build step).

Dependencies: ``pip install 'genrec[serve]'`` (fastapi, uvicorn, faiss-cpu, prometheus-client,
httpx). The core library stays importable without them: nothing outside this package imports it,
and :func:`require` names the extra when they are missing.
"""

from __future__ import annotations

import importlib

from genrec.errors import GenrecError

SERVE_PACKAGES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "prometheus_client": "prometheus-client", "orjson": "orjson"}
"""Modules the service cannot run without (faiss-cpu is needed only for a FAISS index)."""


def missing_packages() -> list[str]:
    missing = []
    for module, pkg in SERVE_PACKAGES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(pkg)
    return missing


def require() -> None:
    """Raise one clear GenrecError when the serve extra is not installed."""
    missing = missing_packages()
    if missing:
        raise GenrecError(f"genrec serve needs {', '.join(missing)}: pip install 'genrec[serve]'")
