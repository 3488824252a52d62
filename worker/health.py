"""HTTP on INTENTUS_METRICS_ADDR: /metrics, /healthz (alive), /readyz (consuming and store writable)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from runtime.forksafe import detach_in_children, fileno_of
from worker.config import option_error
from worker.http import BodyHandler

log = logging.getLogger("intentus.health")


class HealthServer:
    """A small threaded HTTP server; `readiness()` returns (ready, reasons)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        registry: CollectorRegistry,
        readiness: Callable[[], tuple[bool, list[str]]],
    ) -> None:
        self.registry = registry
        self.readiness = readiness
        outer = self

        class Handler(BodyHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self.send_body(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self.send_json(200, {"status": "ok"})
                elif path == "/readyz":
                    ready, reasons = outer.readiness()
                    self.send_json(200 if ready else 503, {"ready": ready, "reasons": reasons})
                else:
                    self.send_json(
                        404, {"error": "not found", "paths": ["/metrics", "/healthz", "/readyz"]}
                    )

            def log_message(self, format: str, *args: object) -> None:
                return

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise option_error(
                "metrics_addr", f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self.httpd.daemon_threads = True
        # A child an agent forks must not keep the port bound after the worker died.
        detach_in_children(self, lambda h: fileno_of(h.httpd, "socket"))
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="intentus-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
