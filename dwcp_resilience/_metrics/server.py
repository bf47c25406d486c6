"""``serve_metrics``: an HTTP ``/metrics`` endpoint, bound to 127.0.0.1 by default.

The server runs in a daemon thread (a scrape never waits for the event loop to be idle to be
accepted), but when :func:`serve_metrics` is called from inside a running event loop (asyncio,
uvloop or trio) each scrape *renders on that loop* through ``anyio.from_thread.run_sync``: the
primitives' ``statistics()`` then run on the thread that mutates them and read the loop's clock, so
a snapshot is consistent and a window-based budget advances on the right clock. Called outside any
loop, it renders in the server thread.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from types import TracebackType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import REGISTRY, CollectorRegistry

from ..core.validate import check_int

__all__ = ("MetricsServer", "serve_metrics")

StartResponse = Callable[..., Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    block_on_close = False  # a handler may be waiting on the loop that is closing the server


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr."""


def _render(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


class MetricsServer:
    """A running ``/metrics`` endpoint: ``host``, ``port`` (the bound one), ``url``; ``close()``."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int, token: Any) -> None:
        self.registry = registry
        self._token = token
        server_class = _Server6 if ":" in host else _Server
        self._httpd = make_server(host, port, self._app, server_class, _QuietHandler)
        self.host = host
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"dwcp-metrics-{self.port}",
            daemon=True,
        )
        self._closed = False
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "/") not in ("/metrics", "/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics\n"]
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b""]
        accept = environ.get("HTTP_ACCEPT", "")
        try:
            if self._token is None:
                body, content_type = _render(self.registry, accept)
            else:
                body, content_type = anyio.from_thread.run_sync(
                    _render, self.registry, accept, token=self._token
                )
        except RuntimeError:  # the event loop is gone
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"the event loop that owns these metrics is not running\n"]
        start_response("200 OK", [("Content-Type", content_type)])
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]

    def close(self) -> None:
        """Stop serving and release the port (blocks for at most about 50 ms)."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5.0)

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        await anyio.to_thread.run_sync(self.close)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> MetricsServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "serving"
        return f"<MetricsServer {self.url} {state}>"


def serve_metrics(
    registry: CollectorRegistry | None = None, host: str = "127.0.0.1", port: int = 0
) -> MetricsServer:
    """Serve ``registry`` (default: the global one) on ``http://host:port/metrics``.

    ``port=0`` picks a free port (read it from ``.port``). Call it from the event loop that runs the
    primitives so that scrapes render there (see the module docs); close it with ``close()``,
    ``await aclose()`` or a ``with`` / ``async with`` block.

    Raises:
        OSError: if the address cannot be bound.
    """
    check_int(port, "port", min_value=0, max_value=65535)
    try:
        token: Any = anyio.lowlevel.current_token()
    except RuntimeError:
        token = None
    return MetricsServer(REGISTRY if registry is None else registry, host, port, token)
