"""What the worker's small HTTP servers share: a handler that answers bodies and JSON."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any


class BodyHandler(BaseHTTPRequestHandler):
    """A request handler with `send_body` and `send_json`; subclasses add headers to every
    response with `extra_headers` and answer HEAD by setting `head_only`."""

    server_version = "intentus"
    sys_version = ""
    json_type = "application/json"
    head_only = False

    def send_json(self, status: int, body: dict[str, Any]) -> None:
        self.send_body(status, json.dumps(body).encode() + b"\n", self.json_type)

    def send_body(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.extra_headers()
        self.end_headers()
        if not self.head_only:
            self.wfile.write(body)

    def extra_headers(self) -> None:
        """Headers every response of this server carries (none here)."""
