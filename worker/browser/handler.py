"""The record browser's HTTP side: who may ask (a loopback Host, or the access token as a
cookie or bearer), the page's files, the API routes, and the security headers of every
response."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs, urlsplit

from runtime.errors import IntentusError, RecordNotFound
from worker.browser.api import ROUTES, BadRequest, RecordQueries
from worker.errors import ConfigError
from worker.http import BodyHandler

log = logging.getLogger("intentus.browser")

TOKEN_ENV = "INTENTUS_BROWSER_TOKEN"
COOKIE = "intentus_browser_token"
_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]{16,256}$")

#: What the page may load: its own script, style and data; nothing inline, nothing foreign.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}


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


def _host_name(header: str) -> str:
    """The host of a Host header (`[::1]:9465` → `::1`); "" when it does not parse."""
    try:
        return urlsplit(f"//{header}").hostname or ""
    except ValueError:
        return ""


class BrowserHandler(BodyHandler):
    """Set on a subclass per server: `queries`, `token` (None: loopback only), `assets`."""

    queries: RecordQueries
    token: str | None
    assets: dict[str, tuple[bytes, str]]
    json_type = "application/json; charset=utf-8"

    def do_GET(self) -> None:
        try:
            self._get()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_HEAD(self) -> None:
        self.head_only = True
        self.do_GET()

    def _refuse(self) -> None:
        self._additional_headers = [("Allow", "GET, HEAD")]
        self.send_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "read-only: GET and HEAD only"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _get(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        params = {name: values[-1] for name, values in query.items()}
        if not self._allowed(url.path, params):
            return
        if url.path in self.assets:
            body, content_type = self.assets[url.path]
            self.send_body(HTTPStatus.OK, body, content_type)
            return
        handler = ROUTES.get(url.path)
        if handler is None:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        try:
            result = handler(self.queries, params)
        except BadRequest as exc:
            self.send_json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except RecordNotFound as exc:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": str(exc)})
        except IntentusError as exc:
            self.send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)})
        except Exception:
            log.exception("record browser: %s failed", url.path)
            self.send_json(
                HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error (see the log)"}
            )
        else:
            self.send_json(HTTPStatus.OK, result)

    def _allowed(self, path: str, params: dict[str, str]) -> bool:
        token = self.token
        if token is None:
            if not is_loopback(_host_name(self.headers.get("Host", ""))):
                self.send_json(HTTPStatus.FORBIDDEN, {"error": "Host must be a loopback address"})
                return False
            return True
        if path == "/" and "token" in params:
            if not hmac.compare_digest(params["token"].encode(), token.encode()):
                self.send_json(HTTPStatus.UNAUTHORIZED, {"error": "wrong token"})
                return False
            # Trade the token in the URL for a cookie, and drop it from the address bar
            # (and so from history and any Referer).
            self.send_response(HTTPStatus.SEE_OTHER)
            self.send_header("Set-Cookie", f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/")
            self.send_header("Location", "/")
            self.send_header("Content-Length", "0")
            self.extra_headers()
            self.end_headers()
            return False
        if self._presented(token):
            return True
        self.send_json(
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

    def version_string(self) -> str:
        return "intentus"

    def extra_headers(self) -> None:
        for name, value in getattr(self, "_additional_headers", ()):
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
