"""The serving app's own CPU per ``POST /v1/recommend``, in-process, with the forward pass stubbed.

    pip install 'genrec[serve]'
    python benchmarks/app_cost.py runs/beauty-hstu/best

Each request goes through the whole ASGI app (middleware, routing, auth, body parsing, checks
against the checkpoint, JSON rendering) as uvicorn would call it, without sockets or uvicorn's
protocol; the micro-batcher is replaced by a stub that returns one canned answer, so no model runs.
Three settings, interleaved round by round so the machine's drift hits all alike:

- ``no token``: the app as ``genrec serve`` builds it without ``$GENREC_API_TOKEN`` (no auth
  dependency on the routes);
- ``token``: the same app with a token, each request sending the right header (the dependency runs);
- ``handler only``: the route's own work alone (parse, checks, render), no framework around it.

CPU time (user + system of this process) per request, median over rounds, 1 torch thread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics

import torch

from genrec.serving import schemas
from genrec.serving.app import create_app
from genrec.serving.responses import StrictJSONResponse
from genrec.serving.service import ServeSettings, load_service, prepare_recommend, recommend_batch
from serve_load import make_bodies  # benchmarks/serve_load.py: the load test's request bodies


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--bodies", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--passes", type=int, default=10, help="passes over the bodies per setting and round")
    args = ap.parse_args()
    torch.set_num_threads(1)
    settings = ServeSettings(checkpoint=args.checkpoint)
    svc = load_service(settings)
    bodies = [json.dumps(b).encode() for b in make_bodies(args.checkpoint, args.bodies)]
    canned = recommend_batch([prepare_recommend(svc, schemas.RecommendRequest.model_validate_json(bodies[0]))])[0]

    async def stub(job):
        return canned

    apps = {"no token": (create_app(settings, svc, token=""), []), "token": (create_app(settings, svc, token="t"),
                                                                           [(b"authorization", b"Bearer t")])}
    for app, _ in apps.values():
        app.state.genrec.recommend = stub

    async def through(app, auth, body):
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
                 "path": "/v1/recommend", "raw_path": b"/v1/recommend", "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode()), *auth],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
        sent, out = [False], []

        async def receive():
            if sent[0]:
                return {"type": "http.disconnect"}
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            out.append(message)

        await app(scope, receive, send)
        if out[0]["status"] != 200:
            raise SystemExit(f"the app answered {out[0]['status']}: {out}")

    async def handler(body):
        req = schemas.RecommendRequest.model_validate_json(body)
        StrictJSONResponse(await stub(prepare_recommend(svc, req)))

    settings_fns = {name: (lambda b, app=app, auth=auth: through(app, auth, b)) for name, (app, auth) in apps.items()}
    settings_fns["handler only"] = handler

    async def run() -> dict[str, list[float]]:
        times: dict[str, list[float]] = {name: [] for name in settings_fns}
        for _ in range(args.rounds):
            for name, fn in settings_fns.items():
                for b in bodies[:20]:  # warm-up
                    await fn(b)
                start = _cpu()
                for _ in range(args.passes):
                    for b in bodies:
                        await fn(b)
                times[name].append(1000 * (_cpu() - start) / (args.passes * len(bodies)))
        return times

    times = asyncio.run(run())
    print(f"{args.checkpoint}: CPU ms per /v1/recommend, forward pass stubbed, median of {args.rounds} rounds "
          f"x {args.passes * len(bodies)} requests")
    print("\n| setting | CPU ms/request | per round |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.3f} | {' '.join(f'{v:.3f}' for v in values)} |")


if __name__ == "__main__":
    main()
