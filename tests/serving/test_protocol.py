"""The HTTP protocol of ``genrec serve``: when a worker stops, a request already on its way on a
connection with nothing in progress is answered (``Connection: close``), not dropped; a silent
connection is closed after the grace; uvicorn's own protocol drops the request (the race this
fixes). A real uvicorn server on 127.0.0.1, raw sockets as the client."""

from __future__ import annotations

import socket
import threading
import time

import pytest

pytest.importorskip("httptools")
uvicorn = pytest.importorskip("uvicorn")

from genrec.serving.protocol import DrainingHttpToolsProtocol  # noqa: E402
from genrec.serving.server import http_protocol  # noqa: E402


async def hello(scope, receive, send):
    if scope["type"] != "http":
        return
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


class Slow(DrainingHttpToolsProtocol):
    drain_seconds = 3.0  # a grace far longer than the test's steps, so a slow machine cannot race it


def start(protocol):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(hello, http=protocol, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    return server, thread, sock.getsockname()[1]


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def get(conn: socket.socket) -> bytes:
    conn.sendall(GET)
    return read_all(conn)


def read_all(conn: socket.socket) -> bytes:
    conn.settimeout(10)
    out = b""
    try:
        while chunk := conn.recv(4096):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def wait_for(server, reached) -> None:
    """Wait until ``reached(the server's open connections)``, however slow the machine."""
    deadline = time.monotonic() + 30
    while not reached(list(server.server_state.connections)):
        assert time.monotonic() < deadline, "the server never reached the awaited state"
        time.sleep(0.01)


def stopping(server, reached, connections: int) -> None:
    """Once the server holds ``connections`` connections, ask it to stop and wait until its
    shutdown has reached them (``reached(connections)``)."""
    wait_for(server, lambda conns: len(conns) == connections)
    server.should_exit = True
    wait_for(server, reached)


def draining(count: int):
    return lambda conns: len(conns) == count and all(c._draining for c in conns)


def test_serve_uses_the_draining_protocol():
    assert http_protocol() is DrainingHttpToolsProtocol


def test_a_request_sent_as_the_worker_stops_is_answered_then_the_connection_closes():
    server, thread, port = start(Slow)
    fresh = socket.create_connection(("127.0.0.1", port))  # connected, its request not sent yet
    idle = socket.create_connection(("127.0.0.1", port))
    idle.sendall(GET)  # a keep-alive connection, answered once, now idle
    idle.settimeout(10)
    assert idle.recv(4096).endswith(b"ok")
    stopping(server, draining(2), 2)
    for conn in (fresh, idle):
        answer = get(conn)  # read to the end: the server closes the connection after its answer
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok"), answer
        assert b"connection: close" in answer.lower()
        conn.close()
    thread.join(30)
    assert not thread.is_alive()


def test_a_silent_connection_is_closed_after_the_grace(monkeypatch):
    monkeypatch.setattr(DrainingHttpToolsProtocol, "drain_seconds", 0.3)
    server, thread, port = start(DrainingHttpToolsProtocol)
    silent = socket.create_connection(("127.0.0.1", port))
    stopping(server, lambda conns: True, 1)
    started = time.monotonic()
    assert read_all(silent) == b""  # closed by the server, no answer to nothing
    assert time.monotonic() - started >= 0.2  # (the grace began a moment before ``started``)
    thread.join(30)
    assert not thread.is_alive()
    silent.close()


def test_uvicorns_own_protocol_drops_the_request_this_protocol_answers():
    """The race itself, shown on uvicorn's protocol: why genrec serve does not use it as is."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    server, thread, port = start(HttpToolsProtocol)
    fresh = socket.create_connection(("127.0.0.1", port))
    stopping(server, lambda conns: not conns, 1)  # uvicorn closed it at once
    try:
        answer = get(fresh)
    except (BrokenPipeError, ConnectionResetError):
        answer = b""
    assert answer == b""
    thread.join(30)
    fresh.close()
