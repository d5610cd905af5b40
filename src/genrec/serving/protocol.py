"""uvicorn's HTTP protocol (httptools) with a graceful end for connections that have no request
in progress when their worker stops.

uvicorn's own graceful shutdown closes such a connection at once. A request already on its way
is then lost: a client that has just connected, or that sends its next request on an idle
keep-alive connection, finds the connection closed without an answer (httpx:
``RemoteProtocolError: Server disconnected without sending a response``). A rolling restart
(``genrec serve --workers N`` reloading) stops each old worker while clients keep sending, so
this is where it showed.

:class:`DrainingHttpToolsProtocol` keeps such a connection open for :attr:`drain_seconds`
instead. A request that arrives meanwhile is answered, with ``Connection: close``, and the
connection closes after its answer. A connection that stays silent is closed when the time is
up. A connection with a request in progress is unchanged: its answer goes out with
``Connection: close``, as uvicorn does. The shutdown waits for the connections to close: an idle
worker stops ``drain_seconds`` later than before, and a request still unfinished after
``server.GRACEFUL_SHUTDOWN_SECONDS`` (a client that sent its headers but not its body) is
cancelled then.

What it does not fix: a connection idle through the whole grace is closed without notice, and a
request crossing that close is lost as before (never processed, so safe to retry). Pipelined
requests behind the one being answered are dropped, as uvicorn does.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class DrainingHttpToolsProtocol(HttpToolsProtocol):
    drain_seconds: float = 0.5
    """How long an idle connection stays open for a request already on its way, once its worker
    stops (loopback and LAN round trips are far below it)."""

    _draining = False

    def shutdown(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            super().shutdown()  # a request in progress: answered, then closed (uvicorn's own way)
            return
        if not self._draining:
            self._draining = True
            self.loop.call_later(self.drain_seconds, self._drained)

    def _drained(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()
        # else: a request arrived while draining; its cycle closes the connection after its answer

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered with Connection: close, then closed
