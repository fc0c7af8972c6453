"""``neuronova worker --metrics-port N``: the worker process's own ``/metrics``.

A worker has no HTTP app; what only it knows is what it observed itself: the durations of the jobs that ended
in it and of their model calls, and its process metrics (memory, CPU, open files). Everything read from durable
state (jobs, queue, outbox, studies) is the node's ``/metrics`` to expose, once for all workers.

The same bearer token as the node's API is required unless ``metrics_public`` is set; a worker on another
machine must then share the node's JWT secret (``NEURONOVA_JWT_SECRET``), or its own secret file would be made.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from neuronova.api.auth import Authenticator
from neuronova.config import Settings
from neuronova.errors import Unauthorized

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the standard library's name)
        return None  # a scrape every few seconds is not worth a log line


def metrics_wsgi_app(settings: Settings) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """The process registry as a WSGI app, behind the API's bearer token unless ``metrics_public``."""
    exposition = make_wsgi_app(REGISTRY)
    authenticator = None if settings.metrics_public else Authenticator.from_settings(settings)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "/") not in ("/metrics", "/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found; the metrics are at /metrics\n"]
        if authenticator is not None:
            try:
                authenticator.authenticate(environ.get("HTTP_AUTHORIZATION"))
            except Unauthorized as exc:
                start_response("401 Unauthorized", [("Content-Type", "application/json"),
                                                    ("WWW-Authenticate", "Bearer")])
                return [json.dumps(exc.to_json()).encode()]
        return exposition(environ, start_response)

    return app


def start_worker_metrics(settings: Settings) -> WSGIServer:
    """Serve the worker's metrics on ``settings.http_host:settings.metrics_port`` from a daemon thread."""
    if settings.metrics_port is None:
        raise ValueError("metrics_port is not set")
    server = make_server(settings.http_host, settings.metrics_port, metrics_wsgi_app(settings), ThreadingWSGIServer,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info("worker metrics on http://%s:%d/metrics", settings.http_host, server.server_port)
    return server
