"""The HTTP service: FastAPI routes over :mod:`genrec.serving.service`.

    POST /v1/recommend   top-k items for a history (micro-batched)     RecommendRequest
    POST /v1/rank        per-task outputs for candidates (M-FALCON)     RankRequest
    GET  /v1/items/{id}  one item's metadata;  GET /v1/items?query=     search by title or id
    GET  /v1/model       model card (data, protocol, metrics, config, index)
    POST /v1/admin/reload  swap in a checkpoint (also SIGHUP)           ReloadRequest
    GET  /healthz, /readyz, /metrics (Prometheus), / (the web page), /docs (OpenAPI)

Auth: when ``GENREC_API_TOKEN`` is set, every ``/v1`` route and ``/metrics`` need
``Authorization: Bearer <token>``. Not the health checks, and not the static page and the API
docs, which hold no data (a browser cannot attach the header to a page load; the page asks for
the token and sends it on its ``/v1`` calls).

Errors are JSON ``{"error": {"code", "message"}}``: 400 for a body that is not JSON (or not an
object), 401, 404, 413 over ``--max-body-bytes``, 422 for a request the model cannot answer as
sent (the message says what to fix). A 500 means the service itself failed, never the input.
Every JSON answer is strict (no NaN or Infinity): :class:`~genrec.serving.responses.StrictJSONResponse`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
import time
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from genrec.errors import GenrecError
from genrec.serving import schemas
from genrec.serving.batcher import MicroBatcher
from genrec.serving.bodies import documented, json_body, parse, validation_error
from genrec.serving.edge import TOKEN_ENV, Edge, failed, token_check
from genrec.serving.metrics import Metrics
from genrec.serving.responses import StrictJSONResponse
from genrec.serving.service import ApiError, ServeSettings, Service, load_service, prepare_recommend, rank, recommend_answer, search_batch

WORKERS_ENV = "GENREC_SERVE_WORKERS"
"""Set by ``genrec serve --workers N`` for its worker processes."""

STATIC = Path(__file__).with_name("static")


class ServiceState:
    """What the app holds: the current :class:`Service` (swapped whole on reload), the batcher,
    metrics and the token. Requests read ``service`` once and keep that object to the end."""

    def __init__(self, settings: ServeSettings, service: Service | None, token: str | None):
        self.settings, self.token, self.metrics = settings, token or None, Metrics()
        self.service = service or load_service(settings)
        self.checkpoint = settings.checkpoint  # the user's path: reloads re-resolve it (never a stale ``.old`` twin)
        self.metrics.serving(self.service.digest, self.service.index.kind if self.service.index else "none", self.service.kind)
        # --no-batching: batches of one, so each request still gets its own pass, and the passes run
        # one at a time on the batcher's model thread (in the shared thread pool up to 40 ran at once,
        # fighting for the GIL and the cores: 4x the CPU per request at 32 users on the 2-core machine)
        self.batcher = MicroBatcher(search_batch, key=lambda job: id(job.service),
                                    max_batch=settings.max_batch if settings.batching else 1,
                                    max_wait_ms=settings.max_wait_ms if settings.batching else 0.0,
                                    on_batch=self.metrics.batch)
        self._reload_lock = asyncio.Lock()
        self.direct = True  # Edge answers POST /v1/recommend itself; False: FastAPI's route does (the tests compare them)

    async def recommend(self, job) -> dict:
        # the answer is built here, on the event loop: the model thread, the busier of the two
        # under load, only runs the forward pass and the search
        return recommend_answer(job, await self.batcher.submit(job))

    async def close(self) -> None:
        await self.batcher.close()
        self.metrics.close()

    async def reload(self, checkpoint: str | None) -> Service:
        """Load ``checkpoint`` (default: the one being served, re-read) beside the current one and
        swap it in; requests in flight finish on the old one. A failure keeps the old one."""
        async with self._reload_lock:
            try:
                new = await run_in_threadpool(load_service, self.settings, checkpoint or self.checkpoint)
            except GenrecError as exc:
                self.metrics.reloads.labels("failed").inc()
                raise ApiError(422, "reload_failed", f"reload failed, still serving {self.service.digest[:12]}: {exc}") from exc
            self.service, self.checkpoint = new, checkpoint or self.checkpoint
            freeze_heap()  # the new model's objects out of the collector's scans; the old ones collectable again
            self.metrics.reloads.labels("ok").inc()
            self.metrics.serving(new.digest, new.index.kind if new.index else "none", new.kind)
            return new


def freeze_heap() -> None:
    """Move every object alive now (the model, the catalogue, the libraries: hundreds of thousands)
    out of the cyclic garbage collector's generations, so its full collections, which otherwise
    walk them all while requests wait, scan only what requests create. Earlier frozen objects are
    unfrozen and collected first (a reload's old model must stay collectable)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def create_app(settings: ServeSettings, service: Service | None = None, token: str | None = None) -> FastAPI:
    """The service over ``settings.checkpoint`` (or an already loaded ``service``). ``token``
    defaults to ``$GENREC_API_TOKEN``."""
    state = ServiceState(settings, service, token if token is not None else os.environ.get(TOKEN_ENV))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        hup = _on_sighup(loop, state)
        freeze_heap()
        yield
        if hup:
            loop.remove_signal_handler(signal.SIGHUP)
        await state.close()

    app = FastAPI(title="genrec", summary="Generative recommendation service", version="1", lifespan=lifespan,
                  default_response_class=StrictJSONResponse)
    app.state.genrec = state
    _errors(app, state)
    # no token: no dependency at all (FastAPI's dependency solving was a fifth of the app's own
    # CPU per /v1/recommend request, for a check that returned at once)
    auth = [Depends(_bearer(state.token))] if state.token is not None else []
    app.include_router(_v1(state), dependencies=auth)
    documented(app)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz() -> dict:
        svc = state.service
        return {"status": "ready", "model": svc.digest[:12], "kind": svc.kind, "loaded_at": svc.loaded_at}

    @app.get("/metrics", dependencies=auth, tags=["health"], response_class=Response)
    def metrics() -> Response:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(Edge, state=state)
    return app


def _v1(state: ServiceState) -> APIRouter:
    v1 = APIRouter(prefix="/v1", responses={401: {"model": schemas.ErrorResponse}, 422: {"model": schemas.ErrorResponse}})

    # the two hot routes answer with a response object: built by service.py in the schema's shape
    # (the tests check it), so FastAPI does not validate the same dict a second time
    @v1.post("/recommend", response_model=schemas.RecommendResponse, tags=["recommend"],
             openapi_extra=json_body(schemas.RecommendRequest))
    async def recommend(request: Request) -> StrictJSONResponse:
        """Top-k items for a history, best first (scores: cosine or dot, see `score`)."""
        req = await parse(request, schemas.RecommendRequest)
        return StrictJSONResponse(await state.recommend(prepare_recommend(state.service, req)))

    @v1.post("/rank", response_model=schemas.RankResponse, tags=["rank"], openapi_extra=json_body(schemas.RankRequest))
    async def rank_candidates(request: Request) -> StrictJSONResponse:
        """Ranking-head outputs for each candidate after the history (ranking/unified checkpoints)."""
        req = await parse(request, schemas.RankRequest)  # (a client gone before its body: 499, not FastAPI's 400)
        return StrictJSONResponse(await run_in_threadpool(rank, state.service, req))

    @v1.get("/items/{item_id:path}", response_model=schemas.Item, tags=["items"], responses={404: {"model": schemas.ErrorResponse}})
    def item(item_id: str) -> dict:
        svc = state.service
        if item_id not in svc.rec.index:
            raise ApiError(404, "unknown_item", f"item {item_id!r} is not in the model's catalogue", [item_id])
        fields = svc.catalog.fields(item_id)
        return {"item": item_id, "title": fields.pop("title", None), "fields": fields}

    @v1.get("/items", response_model=schemas.ItemsResponse, tags=["items"])
    def items(query: str = Query("", max_length=200, description="words of a title, or an id"),
              limit: int = Query(20, ge=1, le=200)) -> dict:
        svc = state.service
        return {"query": query, "items": [svc.titled(i) for i in svc.catalog.search(query, limit)]}

    @v1.get("/model", tags=["model"])
    def model() -> dict:
        """Model card: data, protocol and metrics of the run, model config, index, metadata."""
        return state.service.card

    @v1.post("/admin/reload", tags=["admin"])
    async def reload(response: Response, req: schemas.ReloadRequest | None = None) -> dict:
        """Load a checkpoint (default: the served one, re-read) and swap it in without dropping requests.
        With ``--workers N`` > 1: the served path re-read by every worker, as a rolling restart (202)."""
        workers = int(os.environ.get(WORKERS_ENV, "1"))
        if workers > 1:
            if req is not None and req.checkpoint and Path(req.checkpoint).resolve() != Path(state.checkpoint).resolve():
                raise ApiError(409, "reload_needs_restart", f"this service runs {workers} workers, which all serve "
                               f"{state.checkpoint}: a reload re-reads that path in every worker; to serve another "
                               "checkpoint, restart genrec serve with it (or copy it to the served path and reload)")
            os.kill(os.getppid(), signal.SIGHUP)  # uvicorn's supervisor: new workers one by one, each ready before an old one stops
            state.metrics.reloads.labels("rolling_restart").inc()
            response.status_code = 202
            return {"reloaded": False, "rolling_restart": True, "workers": workers, "checkpoint": str(state.checkpoint),
                    "previous_model": state.service.digest[:12],
                    "check": "GET /readyz (or genrec_model_info in /metrics) until every worker serves the new model; "
                             "a worker that cannot load it is not swapped in (see the server's log)"}
        start = time.perf_counter()
        svc = await state.reload(req.checkpoint if req else None)
        return {"reloaded": True, "checkpoint": str(svc.checkpoint), "model": svc.digest[:12],
                "seconds": round(time.perf_counter() - start, 3)}

    return v1


def _bearer(token: str):
    """The auth dependency for ``token``, fixed when the app is built (the routes are built with or
    without it then, so the token cannot change afterwards)."""
    check_token = token_check(token)

    # async: FastAPI runs a plain-def dependency in its thread pool, a thread hop per request
    async def check(request: Request) -> None:
        check_token(request.headers.get("authorization", ""))

    return check


def _errors(app: FastAPI, state: ServiceState) -> None:
    def answer(request: Request, err: ApiError) -> JSONResponse:
        request.scope["genrec.error"] = err.code
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return StrictJSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return answer(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return answer(request, validation_error(exc.errors()))

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect):
        request.scope["genrec.error"] = "client_disconnected"  # nobody reads the answer; 499 as nginx logs it
        return Response(status_code=499)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(exc.status_code, "http_error")
        return answer(request, ApiError(exc.status_code, code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        return answer(request, failed(request.url.path, exc))


_RELOADS: set = set()
"""SIGHUP reload tasks in flight (held so they cannot be garbage-collected before they finish)."""


def _on_sighup(loop: asyncio.AbstractEventLoop, state: ServiceState) -> bool:
    """SIGHUP reloads the served checkpoint in place (only where signals can be set: the main thread)."""

    def reload() -> None:
        async def run() -> None:
            try:
                svc = await state.reload(None)
                print(f"genrec serve: SIGHUP: now serving {svc.checkpoint} ({svc.digest[:12]})", file=sys.stderr)
            except ApiError as exc:
                print(f"genrec serve: SIGHUP: {exc.message}", file=sys.stderr)
            except Exception as exc:  # noqa: BLE001 - a failed reload keeps the old model; say why, never die silently
                print(f"genrec serve: SIGHUP: reload failed ({type(exc).__name__}: {exc}); still serving the old model", file=sys.stderr)

        task = loop.create_task(run())
        _RELOADS.add(task)  # asyncio keeps only weak references to tasks
        task.add_done_callback(_RELOADS.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread (tests), or no SIGHUP
        return False
    return True
