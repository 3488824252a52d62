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
import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime
from http.server import ThreadingHTTPServer
from importlib import resources

from runtime.policy import Policy
from runtime.registry import AgentRegistry
from runtime.stores.base import RecordStore
from worker.browser.api import RecordQueries
from worker.browser.handler import STATIC, TOKEN_ENV, BrowserHandler, check_token
from worker.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9465


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


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
        self.queries = RecordQueries(
            store, registry=registry, policy=policy, agents=agents, parse_time=parse_time
        )
        assets = {
            path: (
                resources.files("worker.browser").joinpath("static", name).read_bytes(),
                content_type,
            )
            for path, (name, content_type) in STATIC.items()
        }
        handler = type(
            "Handler",
            (BrowserHandler,),
            {"queries": self.queries, "token": self.token, "assets": assets},
        )
        try:
            server = _Server6 if ":" in host else ThreadingHTTPServer
            self.httpd = server((host, port), handler)
        except OSError as exc:
            raise ConfigError(
                f"records serve: cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from exc
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


def token_from(flag: str | None, env: dict[str, str] | None = None) -> str | None:
    """`--token` wins over INTENTUS_BROWSER_TOKEN."""
    environ = os.environ if env is None else env
    return flag if flag else (environ.get(TOKEN_ENV) or None)


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
    from worker.loader import agents_source, load_agents, load_policy_file

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
