"""What the routes do, without HTTP: one loaded checkpoint (:class:`Service`) and the request logic
over it, all through :class:`genrec.Recommender` (the contract the CLI and the evaluator use).

A :class:`Service` is immutable once built: the app holds the current one and swaps in a new one
on reload, while requests already running keep the one they started with. Checks that need the
checkpoint (catalogue size, known ids, feedback shape) happen in :func:`prepare_recommend` /
:func:`rank`, before any forward pass, and fail with :class:`ApiError` (a 4xx and a message that
says what to fix); the forward passes run in :func:`recommend_batch` (several requests at once).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from genrec.checkpoint import load_model_verified, read_item_metadata, resolve
from genrec.errors import GenrecError, UnknownItemError
from genrec.models.contracts import Ranker, Retriever
from genrec.recommender import Query, Recommender
from genrec.serving.index import IndexOptions, ItemIndex, build_index, index_folder
from genrec.data.item_metadata import discover, read_metadata
from genrec.serving.metadata import ItemCatalog
from genrec.serving.schemas import RankRequest, RecommendRequest


@dataclass(frozen=True)
class Limits:
    """Request limits (beyond them: 413 for the body, 422 for the rest)."""

    max_body_bytes: int = 1 << 20
    """Largest request body."""
    max_history: int = 1000
    """Most history items a request may send (the model itself reads only its newest ``max_history``)."""
    max_candidates: int = 1000
    """Most candidates of one /v1/rank request."""
    max_list: int = 10_000
    """Most ids in an allow or deny list."""


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``genrec serve`` was started with (passed to every worker process as JSON)."""

    checkpoint: str
    index: IndexOptions = field(default_factory=IndexOptions)
    metadata: str | None = None
    """Item metadata file (titles); default: the checkpoint's own, else the dataset's (see metadata.py)."""
    index_dir: str | None = None
    """Where FAISS indexes are cached (default ``<checkpoint>.index/``)."""
    batching: bool = True
    """Micro-batch concurrent /v1/recommend requests into one forward pass (else one pass each)."""
    max_batch: int = 64
    """Most requests in one forward pass."""
    max_wait_ms: float = 2.0
    """Longest a request waits for others to join its batch."""
    limits: Limits = field(default_factory=Limits)

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "index": self.index.__dict__, "limits": self.limits.__dict__})

    @classmethod
    def from_json(cls, text: str) -> "ServeSettings":
        raw = json.loads(text)
        return cls(**{**raw, "index": IndexOptions(**raw["index"]), "limits": Limits(**raw["limits"])})


class ApiError(Exception):
    """A request the service refuses: HTTP status, a short code and a message saying what to fix."""

    def __init__(self, status: int, code: str, message: str, unknown: list[str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.unknown = status, code, message, unknown

    def body(self) -> dict:
        err = {"code": self.code, "message": self.message}
        return {"error": err | ({"unknown": self.unknown} if self.unknown is not None else {})}


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Recommender's errors about a request -> ApiError (422 / 400)."""
    try:
        yield
    except UnknownItemError as exc:
        raise ApiError(422, "unknown_items", f"{exc} (ignore_unknown=true drops unknown history ids; candidates must be known)", exc.unknown) from exc
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from exc


class Service:
    """One loaded checkpoint: Recommender, retrieval index, item metadata and model card."""

    def __init__(self, settings: ServeSettings, checkpoint: str | None = None):
        self.settings = settings
        # the digest of the very bytes loaded (one read of one version of the folder, found from the
        # user's path), so a training run that swaps in a new best/ meanwhile cannot mislabel the
        # model or its index
        model, items, experiment, self.digest = load_model_verified(checkpoint or settings.checkpoint)
        self.checkpoint = resolve(checkpoint or settings.checkpoint)
        self.rec = Recommender(model, items, experiment)
        self.can_recommend = isinstance(self.rec.model, Retriever)
        self.can_rank = isinstance(self.rec.model, Ranker)
        self.index: ItemIndex | None = None
        if self.can_recommend:
            folder = Path(settings.index_dir) if settings.index_dir else index_folder(self.checkpoint)
            self.index = build_index(self.rec, settings.index, self.digest, folder)
        self.catalog = ItemCatalog(self.rec.item_ids, *self._metadata())
        self.loaded_at = time.time()
        self.card = self._card()

    @property
    def kind(self) -> str:
        return {(True, False): "retrieval", (False, True): "ranking", (True, True): "unified"}[(self.can_recommend, self.can_rank)]

    def _metadata(self) -> tuple[dict | None, str | None]:
        if self.settings.metadata:
            return read_metadata(self.settings.metadata), self.settings.metadata
        meta = read_item_metadata(self.checkpoint)
        if meta is not None:
            return meta, str(self.checkpoint / "item_metadata.json")
        found = discover(self.rec.experiment)
        return (read_metadata(found), str(found)) if found else (None, None)

    def _card(self) -> dict:
        """Model card: what was trained on what, how it was evaluated, what serves it."""
        metrics_file = self.checkpoint.parent / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        exp, model = self.rec.experiment, self.rec.model
        return {
            "checkpoint": str(self.checkpoint), "weights_sha256": self.digest, "loaded_at": self.loaded_at,
            "kind": self.kind, "num_items": model.num_items, "max_history": model.max_history,
            "uses_timestamps": model.uses_timestamps, "reads_feedback": self.rec.reads_feedback,
            "reads_behaviours": self.rec.reads_behaviours, "tasks": self.rec.task_names,
            "rating_feedback": self.rec.rating_threshold, "rating_range": self.rec.rating_range,
            "user_attributes": self.rec.user_attribute_vocabulary, "domains": {d: list(r) for d, r in self.rec.domains.items()},
            "index": None if self.index is None else self.index.describe(),
            "metadata": {"source": self.catalog.source, "titles": self.catalog.has_titles},
            "data": exp.get("data"), "model": exp.get("model"), "task": exp.get("task"),
            "metrics": {k: metrics[k] for k in ("protocol", "best_epoch", "valid", "test", "test_refit") if k in metrics} or None,
            "config": exp,
        }

    # ---- request helpers -------------------------------------------------------------------------
    def item_idx(self, ids: Sequence, ignore_unknown: bool, what: str) -> list[int]:
        idx = [self.rec.index.get(str(i)) for i in ids]
        unknown = [str(i) for i, j in zip(ids, idx) if j is None]
        if unknown and not ignore_unknown:
            raise ApiError(422, "unknown_items", f"{len(unknown)} {what} id(s) not in the model's catalogue: "
                           f"{', '.join(unknown[:10])}", unknown)
        return [j for j in idx if j is not None]

    def titled(self, item: str) -> dict:
        title = self.catalog.title(item)
        return {"item": item} | ({"title": title} if title is not None else {})


class RecommendJob(NamedTuple):
    """One checked /v1/recommend request, ready for a (batched) forward pass."""

    service: Service
    query: Query
    k: int
    exclude: set[int]
    allow: list[int] | None
    dropped: list[str]


def _check_history(svc: Service, history: list, limits: Limits) -> list[str]:
    if len(history) > limits.max_history:
        raise ApiError(422, "history_too_long", f"the history has {len(history)} items; at most {limits.max_history} are "
                       f"accepted (the model reads the newest {svc.rec.model.max_history})")
    return [str(h) for h in history]


def prepare_recommend(svc: Service, req: RecommendRequest) -> RecommendJob:
    """Check a /v1/recommend request against the loaded checkpoint (no forward pass)."""
    if not svc.can_recommend:
        raise ApiError(400, "not_supported", f"this checkpoint is a {svc.kind} model: it has no retrieval side; use /v1/rank")
    limits = svc.settings.limits
    history = _check_history(svc, req.history, limits)
    n = svc.rec.model.num_items
    if not 1 <= req.k <= n:
        raise ApiError(422, "invalid_k", f"k={req.k} must be between 1 and the catalogue size ({n} items)")
    for name, ids in (("allow", req.allow), ("deny", req.deny)):
        if ids is not None and len(ids) > limits.max_list:
            raise ApiError(422, "list_too_long", f"the {name} list has {len(ids)} ids; at most {limits.max_list}")
    with translated():
        query = svc.rec.query(history, req.timestamps, req.query_time, req.ignore_unknown, req.feedback, req.user_attributes,
                              req.domain)
        resolved = svc.rec.resolve_history(history, req.domain)
    exclude = set(query.known) if req.exclude_history else set()
    with translated():  # (multi-domain: bare ids are the requested domain's, as in the history)
        deny, allow_ids = (None if ids is None else svc.rec.resolve_history(ids, req.domain) for ids in (req.deny, req.allow))
    exclude |= set(svc.item_idx(deny or [], req.ignore_unknown, "deny"))
    allow = None if allow_ids is None else svc.item_idx(allow_ids, req.ignore_unknown, "allow")
    dropped = [h for h, r in zip(history, resolved) if r not in svc.rec.index] if req.ignore_unknown else []  # (else unknown ids raised)
    return RecommendJob(svc, query, req.k, exclude, allow, dropped)


def search_batch(jobs: Sequence[RecommendJob]) -> list[list[tuple[int, float]]]:
    """The model's part of several checked requests of one Service: one forward pass, one index
    search -> per request, (item idx, score) best first. What the micro-batcher's model thread runs;
    :func:`recommend_answer` turns a row into the answer on the event loop."""
    svc = jobs[0].service
    user = svc.rec.query_vectors([j.query for j in jobs])  # [B D]
    ranges = [j.query.item_range for j in jobs]  # multi-domain: the requested domain's items only
    return svc.index.search(user, [j.k for j in jobs], [j.exclude for j in jobs], [j.allow for j in jobs], ranges)


def recommend_answer(job: RecommendJob, row: list[tuple[int, float]]) -> dict:
    """The /v1/recommend answer to ``job`` from its row of :func:`search_batch`."""
    svc = job.service
    return {
        "items": [svc.titled(svc.rec.item_ids[i - 1]) | {"score": round(s, 6)} for i, s in row],
        "score": svc.index.score_kind, "index": svc.index.searched_by(job.allow, job.query.item_range),
        "dropped": job.dropped, "model": svc.digest[:12],
    }


def recommend_batch(jobs: Sequence[RecommendJob]) -> list[dict]:
    """Answer several checked requests of one Service: one forward pass, one index search."""
    return [recommend_answer(job, row) for job, row in zip(jobs, search_batch(jobs))]


def rank(svc: Service, req: RankRequest) -> dict:
    """/v1/rank: ranking-head outputs per candidate (M-FALCON through ``Recommender.rank``)."""
    if not svc.can_rank:
        raise ApiError(400, "not_supported", "this checkpoint is a retrieval-only model with no ranking head; use /v1/recommend")
    history = _check_history(svc, req.history, svc.settings.limits)
    if len(req.candidates) > svc.settings.limits.max_candidates:
        raise ApiError(422, "too_many_candidates", f"{len(req.candidates)} candidates; at most {svc.settings.limits.max_candidates}")
    candidates = [str(c) for c in req.candidates]
    with translated():
        scores = svc.rec.rank(history, candidates, req.feedback, req.timestamps, req.query_time, req.ignore_unknown)
    return {
        "tasks": svc.rec.task_names,
        "candidates": [svc.titled(c) | {"scores": s} for c, s in zip(candidates, scores)],
        "dropped": [h for h in history if h not in svc.rec.index],
        "model": svc.digest[:12],
    }


def load_service(settings: ServeSettings, checkpoint: str | None = None) -> Service:
    """Load a checkpoint for serving; a bad folder is one GenrecError line."""
    try:
        return Service(settings, checkpoint)
    except GenrecError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # RuntimeError: torch/FAISS refusing the files
        raise GenrecError(f"{checkpoint or settings.checkpoint}: cannot be served ({exc})") from exc
