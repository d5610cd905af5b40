"""Helpers of the service tests: the app over a checkpoint, called in-process (httpx over ASGI,
so concurrent requests share one event loop and meet in the micro-batcher)."""

from __future__ import annotations

import asyncio
import json

def settings(checkpoint, **kw):
    from genrec.serving.index import IndexOptions
    from genrec.serving.service import Limits, ServeSettings

    index = IndexOptions(kw.pop("index", "exact"))
    limits = Limits(**kw.pop("limits", {}))
    return ServeSettings(str(checkpoint), index=index, limits=limits, **kw)


def make_app(checkpoint, token: str | None = "", **kw):
    """The app over ``checkpoint`` (no token unless given)."""
    from genrec.serving.app import create_app

    return create_app(settings(checkpoint, **kw), token=token)


def run(app, calls):
    """Run ``calls(client)`` (a coroutine function) against the app in-process; returns its result."""
    import httpx

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://genrec.test", timeout=60) as client:
            return await calls(client)

    return asyncio.run(go())


def request(app, method: str, url: str, **kw):
    async def one(client):
        return await client.request(method, url, **kw)

    return run(app, one)


def strict_json(response) -> object:
    """The response body parsed as standard JSON (NaN / Infinity refused)."""

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token} in {response.text[:200]}")

    return json.loads(response.text, parse_constant=refuse)


def walk(history: list[str], start: int = 1_000_000) -> dict:
    """A request body part: the history with hourly timestamps."""
    return {"history": history, "timestamps": [start + 3600 * i for i in range(len(history))]}
