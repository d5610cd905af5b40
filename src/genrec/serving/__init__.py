"""Serving: genrec behind HTTP (the room is ready; its contents come with the next issue).

What goes here, all thin layers over :class:`genrec.Recommender` (one instance per checkpoint,
shared by every worker thread: it is stateless and thread-safe):

- **the HTTP service** — FastAPI + uvicorn, endpoints mirroring the Python API (``recommend``,
  ``score``, ``rank``, plus health and model info); request and response schemas at the edge,
  no model logic;
- **micro-batching** — concurrent requests gathered for a few milliseconds into one padded batch
  per forward pass (the models' contracts already take [B, N] histories), answers split back per
  request;
- **an ANN index** — FAISS over :meth:`genrec.Recommender.item_vectors` (inner product: scores
  are dot products), an approximate top-k in place of the exact full-catalogue scan for large
  catalogues, with the same history exclusion.

Dependencies: the service's packages (``fastapi``, ``uvicorn``, ``faiss-cpu``) belong in an
optional extra, ``pip install genrec[serve]``. The core library must stay importable and fully
usable without them: nothing outside this package imports it, and modules here import those
packages themselves (failing with a message naming the extra when they are missing).
"""
