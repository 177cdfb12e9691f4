"""The small HTTP server beside gRPC: `/metrics`, `/healthz`, `/readyz`, nothing else.

It is bounded like the gRPC port: at most `max_connections` connections (and so threads)
at once, each with a socket timeout so a half-open client cannot pin a thread; unknown paths
answer 404; with TLS the handshake runs in the connection's thread, under that timeout, not
on the accept loop; with API keys everything but the probes needs a bearer token.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

log = logging.getLogger(__name__)

# An HTTP route: () -> (status line, content type, body).
Route = Callable[[], tuple[str, str, bytes]]
# Probes stay open without a key, so an orchestrator needs no secret to check liveness.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


class _QuietHandler(WSGIRequestHandler):
    timeout = 10.0  # seconds a connection may sit idle mid-request

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing per request (a scrape every few seconds is no news)."""


class BoundedWSGIServer(ThreadingMixIn, WSGIServer):
    """A thread per connection, at most `max_connections` of them; more are closed at once."""

    daemon_threads = True
    max_connections = 16

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self.refused = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if isinstance(request, ssl.SSLSocket):
                request.settimeout(_QuietHandler.timeout)
                request.do_handshake()
            super().process_request_thread(request, client_address)
        except (OSError, ssl.SSLError) as exc:
            log.debug("metrics connection from %s: %s", client_address, exc)
            self.shutdown_request(request)
        finally:
            self._slots.release()


def serve_http(
    host: str,
    port: int,
    routes: dict[str, Route],
    *,
    ssl_context: ssl.SSLContext | None = None,
    authorized: Callable[[str | None], bool] | None = None,
    max_connections: int = 16,
) -> tuple[BoundedWSGIServer, threading.Thread]:
    """Serve `routes` (exact paths) on a daemon thread; port 0 picks a free one.

    `authorized` gets the ``Authorization`` header of each request to a path outside
    :data:`OPEN_PATHS`; a False answer is 401. Stop with ``server.shutdown();
    server.server_close(); thread.join()``.
    """

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        route = routes.get(path)
        if route is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics, /healthz or /readyz\n"]
        if (
            authorized is not None
            and path not in OPEN_PATHS
            and not authorized(environ.get("HTTP_AUTHORIZATION"))
        ):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
            )
            return [b"missing or invalid API key\n"]
        status, content_type, body = route()
        start_response(status, [("Content-Type", content_type)])
        return [body]

    server_class = type(
        "MetricsHTTPServer", (BoundedWSGIServer,), {"max_connections": max_connections}
    )
    httpd: BoundedWSGIServer = make_server(
        host, port, app, server_class, handler_class=_QuietHandler
    )
    if ssl_context is not None:
        httpd.socket = ssl_context.wrap_socket(
            httpd.socket, server_side=True, do_handshake_on_connect=False
        )
    thread = threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return httpd, thread
