"""The app's outer ASGI layer: body limit, metrics, and the hot route answered directly.

:class:`Edge` wraps the FastAPI app. For every request it refuses a body over the limit (413) and
records route, status, latency and error code in the metrics. ``POST /v1/recommend`` it answers
itself, without Starlette's routing and FastAPI's request handling: the same auth check, body
parsing (:func:`~genrec.serving.bodies.parse_bytes`), micro-batched answer and JSON rendering as
the FastAPI route, whose declaration stays for the OpenAPI document. That layer was a third of the
event loop's CPU per request at 32 users on the project's 2-core machine, where the event loop and
the model thread share one interpreter lock and the loop's share bounds the throughput
(``benchmarks/RESULTS.md``). The tests hold the two paths to the same answers, errors included.
"""

from __future__ import annotations

import asyncio
import hmac
import sys
import time
from typing import TYPE_CHECKING

from starlette.exceptions import HTTPException

from genrec.serving import schemas
from genrec.serving.bodies import parse_bytes
from genrec.serving.responses import render
from genrec.serving.service import ApiError, prepare_recommend

if TYPE_CHECKING:
    from genrec.serving.app import ServiceState

RECOMMEND = "/v1/recommend"
TOKEN_ENV = "GENREC_API_TOKEN"


class Edge:
    """Outer ASGI middleware: 413 over the body limit, metrics for every request, and
    ``POST /v1/recommend`` answered directly (see the module's doc)."""

    def __init__(self, app, state: ServiceState):
        self.app, self.state = app, state
        self.check_token = None if state.token is None else token_check(state.token)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status, started = time.perf_counter(), [500], [False]
        limit = self.state.settings.limits.max_body_bytes

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0], started[0] = message["status"], True
            await send(message)

        headers = dict(reversed(scope["headers"]))  # the first of a repeated header, as Starlette reads it
        try:
            length = int(headers.get(b"content-length", b"0"))
        except ValueError:
            length = 0
        try:
            if length > limit:
                await _send_error(scope, send_status, too_large(limit))
            elif _route_path(scope) == RECOMMEND and scope["method"] == "POST" and self.state.direct:
                scope["genrec.route"] = RECOMMEND
                status[0] = await self._recommend(scope, headers, receive, send_status, limit)
            else:
                await self.app(scope, _limited(receive, limit), send_status)
        except asyncio.CancelledError:  # (the server gave up on the request, e.g. its shutdown timeout)
            if not started[0]:
                status[0] = 499
            scope.setdefault("genrec.error", "cancelled")
            raise
        except Exception:
            scope.setdefault("genrec.error", "internal_error")  # (the app's 500 answer is sent further out)
            raise
        finally:
            route = scope.get("route")
            path = route.path if route is not None else scope.get("genrec.route", "unmatched")
            self.state.metrics.observe(path, scope["method"], status[0], time.perf_counter() - start)
            if status[0] >= 400:
                self.state.metrics.error(path, scope.get("genrec.error", str(status[0])))

    async def _recommend(self, scope, headers: dict, receive, send, limit: int) -> int:
        """The ``POST /v1/recommend`` route, as the FastAPI one answers it; returns the status."""
        try:
            if self.check_token is not None:
                self.check_token(headers.get(b"authorization", b"").decode("latin-1"))
            body = await _read(receive, limit)
            if body is None:  # the client hung up before sending its body: nobody to answer (the app's route: the same, 499)
                scope["genrec.error"] = "client_disconnected"
                return 499
            kind = headers.get(b"content-type")
            req = parse_bytes(body, None if kind is None else kind.decode("latin-1"), schemas.RecommendRequest)
            answer = await self.state.recommend(prepare_recommend(self.state.service, req))
            await _send_json(send, 200, render(answer))
            return 200
        except ApiError as err:
            return await _send_error(scope, send, err)
        except Exception as exc:  # as the app's handler of anything else: a 500 that says what failed, then
            await _send_error(scope, send, failed(RECOMMEND, exc))
            raise  # on to the server, which logs the traceback and closes the connection, as after the route's 500


def _route_path(scope) -> str:
    """The path the app routes on: without the root path the server was started under."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        return path[len(root) :]
    return path


def token_check(token: str):
    """The check of an ``Authorization`` header's value against ``token``: raises the 401."""
    expected = f"Bearer {token}".encode()

    def check(given: str) -> None:
        if not hmac.compare_digest(given.encode(), expected):
            raise ApiError(401, "unauthorized", f"send the token of ${TOKEN_ENV} as 'Authorization: Bearer <token>'")

    return check


def failed(path: str, exc: Exception) -> ApiError:
    """The 500 of a request to ``path`` that failed with ``exc`` (logged here, one line)."""
    print(f"genrec serve: {path} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return ApiError(500, "internal_error", f"the service failed: {type(exc).__name__}: {exc}")


def too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the body is over the limit of {limit} bytes")


async def _read(receive, limit: int) -> bytes | None:
    """The whole request body (ApiError 413 once it passes ``limit``); None if the client left."""
    chunks, seen = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_json(send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """One JSON answer with the headers a StrictJSONResponse carries."""
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(scope, send, err: ApiError) -> int:
    scope["genrec.error"] = err.code
    await _send_json(send, err.status, render(err.body()), [(b"www-authenticate", b"Bearer")] if err.status == 401 else None)
    return err.status


def _limited(receive, limit: int):
    """A receive that fails with 413 once a (chunked) body passes ``limit`` bytes."""
    seen = [0]

    async def counted():
        message = await receive()
        if message["type"] == "http.request":
            seen[0] += len(message.get("body", b""))
            if seen[0] > limit:  # an HTTPException passes FastAPI's body parsing unchanged
                raise HTTPException(413, too_large(limit).message)
        return message

    return counted
