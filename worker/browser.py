"""`intentus records serve`: a read-only web page and JSON API over the execution store.

Safe by default: it binds to loopback, answers GET and HEAD only, and writes nothing. Any
other bind needs an access token (`--token` or INTENTUS_BROWSER_TOKEN), given once as
`/?token=…` (which sets an HttpOnly cookie) or as `Authorization: Bearer …`. Without a
token, requests must name a loopback host, so a web page elsewhere cannot reach the records
through DNS rebinding. Every response carries a strict Content-Security-Policy: the page's
script is a file, and it builds the DOM with textContent only, since records hold user input.

API (all GET, JSON):
  /api/info                                   the store, and whether verify checks routing
  /api/records?intent&status&error_code&agent&since&until&q&limit&offset
                                              a page of rows newest first, total, counts by status
  /api/record?id=ID                           one record (executionId, requestId or
                                              correlationId) and its stored reply
  /api/verify?id=ID                           `records verify` for one record
  /api/diff?a=ID&b=ID                         where two records differ
  /api/stats                                  `records stats`
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Callable
from datetime import datetime
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from runtime import query
from runtime import replay as records
from runtime.errors import IntentusError, RecordNotFound
from runtime.pgstore import PostgresRecordStore
from runtime.policy import Policy
from runtime.registry import AgentRegistry
from runtime.store import FileRecordStore, MemoryRecordStore, RecordStore
from runtime.version import __version__
from worker.errors import ConfigError

log = logging.getLogger("intentus.browser")

TOKEN_ENV = "INTENTUS_BROWSER_TOKEN"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9465
MAX_LIMIT = 500
DEFAULT_LIMIT = 50
COOKIE = "intentus_browser_token"
_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]{16,256}$")

#: What the page may load: its own script, style and data; nothing inline, nothing foreign.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
_SCAN_NOTE = (
    "this store has no index: every listing reads every record "
    "(seconds per page at hundreds of thousands of records)"
)


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (`localhost`, 127.0.0.0/8, ::1)."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_token(host: str, token: str | None) -> str | None:
    """The token to require (None: none), or a ConfigError when the bind is unsafe."""
    if token is not None and token != "" and not _TOKEN.match(token):
        raise ConfigError(
            f"{TOKEN_ENV} (--token): use 16 to 256 letters, digits or ._~+/=- characters"
        )
    if not token and not is_loopback(host):
        raise ConfigError(
            f"listening on {host} (not loopback) needs an access token: --token or {TOKEN_ENV}"
        )
    return token or None


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _BadRequest(Exception):
    pass


class RecordBrowser:
    """The HTTP server; `start()` runs it on a thread, `serve_forever()` in the caller."""

    def __init__(
        self,
        store: RecordStore,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        token: str | None = None,
        registry: AgentRegistry | None = None,
        policy: Policy | None = None,
        agents: str = "",
        parse_time: Callable[[str], datetime] | None = None,
    ) -> None:
        self.store = store
        self.token = check_token(host, token)
        self.registry = registry
        self.policy = policy
        #: Where `registry` came from, as said to the user.
        self.agents = agents if registry is not None else ""
        self.parse_time = parse_time or _iso_time
        self.assets = {
            path: (resources.files("worker").joinpath("static", name).read_bytes(), ctype)
            for path, (name, ctype) in _STATIC.items()
        }
        handler = type("Handler", (_Handler,), {"browser": self})
        try:
            server = _Server6 if ":" in host else ThreadingHTTPServer
            self.httpd = server((host, port), handler)
        except OSError as exc:
            raise ConfigError(
                f"records serve: cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self.httpd.daemon_threads = True
        self.host = host
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> RecordBrowser:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="intentus-browser", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=5)
        self.httpd.server_close()

    # -- the API, as plain functions of the query ---------------------------------------
    def info(self) -> dict[str, Any]:
        indexed = query.is_indexed(self.store)
        return {
            "version": __version__,
            "store": store_kind(self.store),
            "indexed": indexed,
            "note": None if indexed else _SCAN_NOTE,
            "verifiesRouting": self.registry is not None,
            "agents": self.agents or None,
        }

    def records(self, params: dict[str, str]) -> dict[str, Any]:
        flt = query.RecordFilter(
            intent=params.get("intent") or None,
            status=params.get("status") or None,
            error_code=params.get("error_code") or None,
            agent=params.get("agent") or None,
            since=self._time(params, "since"),
            until=self._time(params, "until"),
            text=params.get("q") or None,
        )
        limit = _int(params, "limit", default=DEFAULT_LIMIT, low=1, high=MAX_LIMIT)
        offset = _int(params, "offset", default=0, low=0, high=None)
        result = query.page(self.store, flt, limit=limit, offset=offset)
        return {
            "rows": result.rows,
            "total": result.total,
            "limit": limit,
            "offset": offset,
            "counts": result.counts,
            "indexed": result.indexed,
            "note": None if result.indexed else _SCAN_NOTE,
        }

    def record(self, params: dict[str, str]) -> dict[str, Any]:
        eid, record = records.find(self.store, _required(params, "id"))
        try:
            reply: str | None = records.replay(record).decode("utf-8", errors="replace")
        except IntentusError:
            reply = None
        return {"executionId": eid, "record": record, "reply": reply}

    def verify(self, params: dict[str, str]) -> dict[str, Any]:
        eid, record = records.find(self.store, _required(params, "id"))
        result = records.verify(eid, record, self.registry, self.policy)
        return {
            "executionId": eid,
            "ok": result.ok,
            "problems": result.problems,
            "notes": result.notes,
            "routingChecked": self.registry is not None
            and records.ROUTING_UNCHECKED not in result.notes,
            "agents": self.agents or None,
        }

    def diff(self, params: dict[str, str]) -> dict[str, Any]:
        a_id, a = records.find(self.store, _required(params, "a"))
        b_id, b = records.find(self.store, _required(params, "b"))
        rows = []
        for path, va, vb in records.differences(a, b):
            row: dict[str, Any] = {"path": path}
            if va is not records.MISSING:
                row["a"] = va
            if vb is not records.MISSING:
                row["b"] = vb
            rows.append(row)
        return {
            "a": {"executionId": a_id, "record": a},
            "b": {"executionId": b_id, "record": b},
            "differences": rows,
        }

    def stats(self, params: dict[str, str]) -> dict[str, Any]:
        out = records.stats(self.store)
        own = hasattr(self.store, "stats")
        out["indexed"] = own
        out["note"] = "counted in the store's indexes" if own else "counted by reading every record"
        return out

    def _time(self, params: dict[str, str], name: str) -> datetime | None:
        text = params.get(name)
        if not text:
            return None
        try:
            return self.parse_time(text)
        except (ConfigError, ValueError) as exc:
            raise _BadRequest(f"{name}: {exc}") from None


def store_kind(store: RecordStore) -> str:
    """A name for the page's header: `files`, `memory`, or the store's own `kind`."""
    if isinstance(store, FileRecordStore):
        return "files"
    if isinstance(store, MemoryRecordStore):
        return "memory"
    if isinstance(store, PostgresRecordStore):
        return "postgresql"
    return str(getattr(store, "kind", type(store).__name__))


def _iso_time(text: str) -> datetime:
    moment = query.parse_time(text)
    if moment is None:
        raise ValueError(f"expected an ISO 8601 time, got {text!r}")
    return moment


def _host_name(header: str) -> str:
    """The host of a Host header (`[::1]:9465` → `::1`); "" when it does not parse."""
    try:
        return urlsplit(f"//{header}").hostname or ""
    except ValueError:
        return ""


def _required(params: dict[str, str], name: str) -> str:
    value = params.get(name, "").strip()
    if not value:
        raise _BadRequest(f"missing parameter {name!r}")
    return value


def _int(params: dict[str, str], name: str, *, default: int, low: int, high: int | None) -> int:
    text = params.get(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise _BadRequest(f"{name}: expected an integer, got {text!r}") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _BadRequest(f"{name}: must be {bound}")
    return value


_API: dict[str, Callable[[RecordBrowser, dict[str, str]], dict[str, Any]]] = {
    "/api/info": lambda b, _p: b.info(),
    "/api/records": RecordBrowser.records,
    "/api/record": RecordBrowser.record,
    "/api/verify": RecordBrowser.verify,
    "/api/diff": RecordBrowser.diff,
    "/api/stats": RecordBrowser.stats,
}


class _Handler(BaseHTTPRequestHandler):
    browser: RecordBrowser
    server_version = "intentus"
    sys_version = ""

    def do_GET(self) -> None:
        try:
            self._get()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_HEAD(self) -> None:
        self._head_only = True
        self.do_GET()

    def _refuse(self) -> None:
        self._extra = [("Allow", "GET, HEAD")]
        self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "read-only: GET and HEAD only"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _get(self) -> None:
        url = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if not self._allowed(url.path, params):
            return
        if url.path in self.browser.assets:
            body, ctype = self.browser.assets[url.path]
            self._send(HTTPStatus.OK, body, ctype)
            return
        handler = _API.get(url.path)
        if handler is None:
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        try:
            result = handler(self.browser, params)
        except _BadRequest as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except RecordNotFound as exc:
            self._json(HTTPStatus.NOT_FOUND, {"error": str(exc)})
        except IntentusError as exc:
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)})
        except Exception:
            log.exception("record browser: %s failed", url.path)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error (see the log)"})
        else:
            self._json(HTTPStatus.OK, result)

    def _allowed(self, path: str, params: dict[str, str]) -> bool:
        token = self.browser.token
        if token is None:
            if not is_loopback(_host_name(self.headers.get("Host", ""))):
                self._json(HTTPStatus.FORBIDDEN, {"error": "Host must be a loopback address"})
                return False
            return True
        if path == "/" and "token" in params:
            if not hmac.compare_digest(params["token"].encode(), token.encode()):
                self._json(HTTPStatus.UNAUTHORIZED, {"error": "wrong token"})
                return False
            # Trade the token in the URL for a cookie, and drop it from the address bar
            # (and so from history and any Referer).
            self.send_response(HTTPStatus.SEE_OTHER)
            self.send_header("Set-Cookie", f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/")
            self.send_header("Location", "/")
            self.send_header("Content-Length", "0")
            self._common_headers()
            self.end_headers()
            return False
        if self._presented(token):
            return True
        self._json(
            HTTPStatus.UNAUTHORIZED,
            {
                "error": "an access token is required: open /?token=… or send Authorization: Bearer …"
            },
        )
        return False

    def _presented(self, token: str) -> bool:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].encode(), token.encode()):
            return True
        try:
            cookie = SimpleCookie(self.headers.get("Cookie", ""))
        except CookieError:
            return False
        morsel = cookie.get(COOKIE)
        return morsel is not None and hmac.compare_digest(morsel.value.encode(), token.encode())

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode() + b"\n", "application/json; charset=utf-8")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self._common_headers()
        self.end_headers()
        if not getattr(self, "_head_only", False):
            self.wfile.write(body)

    def version_string(self) -> str:
        return "intentus"

    def _common_headers(self) -> None:
        for name, value in getattr(self, "_extra", ()):
            self.send_header(name, value)
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-store")

    def log_message(self, format: str, *args: object) -> None:
        # The query string may hold the token: log the path only.
        log.debug("%s %s", self.command, urlsplit(self.path).path)


def token_from(flag: str | None, env: dict[str, str] | None = None) -> str | None:
    """`--token` wins over INTENTUS_BROWSER_TOKEN."""
    environ = os.environ if env is None else env
    return flag if flag else (environ.get(TOKEN_ENV) or None)


__all__ = ["CSP", "DEFAULT_PORT", "TOKEN_ENV", "RecordBrowser", "check_token", "is_loopback"]


# -- `intentus records serve` -----------------------------------------------------------
HELP = "serve a read-only web page and JSON API over the records (loopback by default)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free)"
    )
    parser.add_argument(
        "--token",
        help=f"access token, required to listen beyond loopback [env {TOKEN_ENV}, "
        "which keeps it out of the process list]",
    )


def run(args: argparse.Namespace, store: RecordStore, parse_time: Callable[[str], datetime]) -> int:
    """Serve until interrupted; exit code 0."""
    from worker import config as configuration
    from worker.cli import agents_source
    from worker.loader import load_agents, load_policy_file

    cfg = configuration.load(args)
    # As `records verify`: the demo agents when none are named; records of agents the
    # registry does not know are then checked for integrity only (a note, not a failure).
    registry = load_agents(cfg.agents)
    policy = load_policy_file(cfg.policy_file)
    browser = RecordBrowser(
        store,
        host=args.host,
        port=args.port,
        token=token_from(args.token),
        registry=registry,
        policy=policy,
        agents=agents_source(cfg.agents),
        parse_time=parse_time,
    )
    access = "open it with ?token=<the token>" if browser.token else "no token"
    print(f"record browser on {browser.url} (read-only; {access}; Ctrl-C stops it)", flush=True)
    try:
        browser.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        browser.httpd.server_close()
    return 0
