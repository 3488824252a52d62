"""Configuration: `INTENTUS_*` environment variables, each with a matching CLI flag.

Flags win over the environment, which wins over the defaults. Every value is checked here,
once; a bad one is a ConfigError naming the variable (exit code 2).
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import unquote, urlsplit

from runtime import defaults
from worker.errors import ConfigError

LOG_LEVELS = ("debug", "info", "warning", "error")
# RabbitMQ's default max_message_size (3.10 on). The broker does not tell a client its limit,
# and a publish over it closes the channel (redelivering every unacked delivery), so the
# worker checks a reply's size against its own setting before publishing.
MAX_REPLY_BYTES = 128 * 1024 * 1024
MIN_REPLY_BYTES = 4096  # room for the RESPONSE_TOO_LARGE answer itself


@dataclass(frozen=True)
class Option:
    """One setting: its help text and default; its type is the default's, and its environment
    variable and flag follow from its name (`queue_type`: `INTENTUS_QUEUE_TYPE`,
    `--queue-type`)."""

    help: str
    default: Any
    env: str = ""
    flag: str = ""

    @property
    def kind(self) -> type:
        return type(self.default)

    def named(self, name: str) -> Option:
        return replace(self, env=f"INTENTUS_{name.upper()}", flag="--" + name.replace("_", "-"))

    def help_text(self) -> str:
        """The flag's `--help` line: what it is, its default, and its variable."""
        shown = f"{self.default:g}" if isinstance(self.default, float) else self.default
        default = f" (default: {shown})" if shown not in ("", None) else ""
        # argparse expands %-placeholders in help: the default URL's %2F must stay literal.
        return f"{self.help}{default} [env {self.env}]".replace("%", "%%")


# The one declaration of every setting: Config's defaults, the flags, their help and
# docs/contract.md (checked by tests/unit/test_contract_doc.py) all come from here.
_DECLARED: dict[str, Option] = {
    "amqp_url": Option(
        help="broker URL (amqp:// or amqps://)", default="amqp://guest:guest@localhost:5672/%2F"
    ),
    "queue": Option(help="request queue", default="intentus.requests"),
    "queue_type": Option(help="quorum or classic", default="quorum"),
    "reply_queue": Option(help='default reply queue ("" disables)', default="intentus.replies"),
    "records_dir": Option(help="execution records folder", default=".intentusnet/records"),
    "records_url": Option(
        help="PostgreSQL execution store (postgresql://...; unset: files in the records folder)",
        default="",
    ),
    "agents": Option(help="agents as module:attribute (default: built-in demo agents)", default=""),
    "policy_file": Option(help="policy JSON file", default=""),
    "concurrency": Option(help="requests routed at once", default=8),
    "prefetch": Option(
        help="unacknowledged deliveries held at once (0: 64, or 1024 when an agent is async)",
        default=0,
    ),
    "agent_timeout_s": Option(
        help="default per-agent deadline (seconds)", default=defaults.AGENT_TIMEOUT_S
    ),
    "max_message_bytes": Option(
        help="largest request body accepted", default=defaults.MAX_MESSAGE_BYTES
    ),
    "max_reply_bytes": Option(
        help="largest reply published (at most the broker's max_message_size); a larger"
        " response is recorded whole and answered RESPONSE_TOO_LARGE",
        default=MAX_REPLY_BYTES,
    ),
    "metrics_addr": Option(
        help="host:port for /metrics, /healthz, /readyz", default="127.0.0.1:9464"
    ),
    "shutdown_grace_s": Option(help="time to finish in-flight work on SIGTERM", default=30.0),
    "log_format": Option(help="text or json", default="text"),
    "log_level": Option(help="debug, info, warning or error", default="info"),
    "worker_id": Option(help="unique id of this worker (default hostname-pid)", default=""),
    "delivery_limit": Option(
        help="quorum queues: deliveries before the broker dead-letters a message", default=20
    ),
    "queue_max_priority": Option(
        help="classic queues: declare x-max-priority (0 = no priorities; 9 keeps all four apart)",
        default=0,
    ),
}
OPTIONS: dict[str, Option] = {name: option.named(name) for name, option in _DECLARED.items()}


def _default(name: str) -> Any:
    return OPTIONS[name].default


DEFAULT_AMQP_URL: str = _default("amqp_url")
DEFAULT_QUEUE: str = _default("queue")

#: The prefetch when none is set: enough queued deliveries to keep the routing threads busy
#: with sync agents; with an async agent, what is in flight *is* the prefetch, so it is large
#: enough for a thousand slow agent calls at once (back-pressure is the broker's, never a
#: queue in memory).
PREFETCH_SYNC = 64
PREFETCH_ASYNC = 1024


def with_prefetch(cfg: Config, *, any_async: bool) -> Config:
    """`cfg` with its prefetch chosen from the agents if it was left at 0."""
    if cfg.prefetch:
        return cfg
    return replace(cfg, prefetch=PREFETCH_ASYNC if any_async else PREFETCH_SYNC)


#: How long a client (and `intentus send`) waits for the broker's confirm and the reply.
REPLY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Config:
    """Every setting, typed; the defaults are OPTIONS' (a unit test keeps the two in step)."""

    amqp_url: str = _default("amqp_url")
    queue: str = _default("queue")
    queue_type: str = _default("queue_type")
    reply_queue: str = _default("reply_queue")
    records_dir: str = _default("records_dir")
    records_url: str = _default("records_url")
    agents: str = _default("agents")
    policy_file: str = _default("policy_file")
    concurrency: int = _default("concurrency")
    prefetch: int = _default("prefetch")
    agent_timeout_s: float = _default("agent_timeout_s")
    max_message_bytes: int = _default("max_message_bytes")
    max_reply_bytes: int = _default("max_reply_bytes")
    metrics_addr: str = _default("metrics_addr")
    shutdown_grace_s: float = _default("shutdown_grace_s")
    log_format: str = _default("log_format")
    log_level: str = _default("log_level")
    # An empty INTENTUS_WORKER_ID means this rule too (see `load`).
    worker_id: str = field(default_factory=defaults.default_worker_id)
    delivery_limit: int = _default("delivery_limit")
    queue_max_priority: int = _default("queue_max_priority")

    @property
    def dlx(self) -> str:
        return f"{self.queue}.dlx"

    @property
    def dlq(self) -> str:
        return f"{self.queue}.dlq"

    @property
    def metrics_host_port(self) -> tuple[str, int]:
        host, _, port = self.metrics_addr.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)

    @property
    def safe_url(self) -> str:
        return mask_url(self.amqp_url)

    @property
    def password(self) -> str | None:
        return url_password(self.amqp_url)


def url_password(url: str) -> str | None:
    try:
        pw = urlsplit(url).password
    except ValueError:
        return None
    return unquote(pw) if pw else None


# scheme://user:password@host — the authority ends at the first "/", "?" or "#", and its
# password runs to the authority's last "@" (a password may itself contain "@").
_URL_PASSWORD = re.compile(r"(://[^:/?#@\s]*:)[^/?#\s]*@")


def mask_url(url: str) -> str:
    """The URL (or every URL in a text) with its password replaced by ***."""
    return _URL_PASSWORD.sub(r"\1***@", url)


def url_problem(url: str) -> str | None:
    """Why `url` cannot be read as scheme://user:password@host:port/path, or None.

    An unencoded "/", "?" or "#" in the password ends the URL's authority early: what
    follows would be taken for the port, path, query or fragment, and a fragment of the
    password for the password. The answer repeats no part of the URL: it may be a secret."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parts = None
    if parts is None or "@" in parts.path + parts.query + parts.fragment:
        return (
            "cannot be read as scheme://user:password@host:port/...: percent-encode any of "
            ": / ? # @ [ ] % and spaces in the user name and password (# as %23, / as %2F, "
            "? as %3F, @ as %40, % as %25)"
        )
    return None


def option_error(name: str, why: str) -> ConfigError:
    """A configuration error in the one format used everywhere: `INTENTUS_X (--x): why`."""
    opt = OPTIONS[name]
    return ConfigError(f"{opt.env} ({opt.flag}): {why}")


def add_arguments(parser: argparse.ArgumentParser, names: list[str] | None = None) -> None:
    for name in names or list(OPTIONS):
        opt = OPTIONS[name]
        # default=None: an unset flag must not hide the environment variable (see `load`).
        parser.add_argument(
            opt.flag, dest=name, default=None, metavar=opt.env, help=opt.help_text()
        )


def _convert(name: str, raw: str) -> Any:
    opt = OPTIONS[name]
    if opt.kind is int:
        try:
            return int(raw.strip())
        except ValueError:
            raise option_error(name, f"expected an integer, got {raw!r}") from None
    if opt.kind is float:
        try:
            return float(raw.strip())
        except ValueError:
            raise option_error(name, f"expected a number, got {raw!r}") from None
    return raw


def load(args: argparse.Namespace | None = None, env: dict[str, str] | None = None) -> Config:
    """Defaults ← environment ← flags, then validated."""
    env = dict(os.environ if env is None else env)
    values: dict[str, Any] = {}
    for name, opt in OPTIONS.items():
        raw = getattr(args, name, None) if args is not None else None
        if raw is None:
            raw = env.get(opt.env)
        if raw is None:
            continue
        values[name] = _convert(name, raw)
    if not values.get("worker_id"):
        values.pop("worker_id", None)
    cfg = Config(**values)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    bad = option_error

    scheme = urlsplit(cfg.amqp_url).scheme
    if scheme not in ("amqp", "amqps"):
        raise bad(
            "amqp_url", f"must start with amqp:// or amqps:// (got {mask_url(cfg.amqp_url)!r})"
        )
    if not cfg.queue or len(cfg.queue.encode()) > 200:
        raise bad("queue", "must be a non-empty name of at most 200 bytes")
    if cfg.queue.startswith("amq."):
        raise bad("queue", "names starting with 'amq.' are reserved by the broker")
    if cfg.queue_type not in ("quorum", "classic"):
        raise bad("queue_type", f"must be quorum or classic, got {cfg.queue_type!r}")
    if cfg.concurrency < 1 or cfg.concurrency > 1024:
        raise bad("concurrency", "must be between 1 and 1024")
    if cfg.prefetch < 0 or cfg.prefetch > 65535:
        raise bad("prefetch", "must be between 1 and 65535 (or 0: chosen from the agents)")
    if not cfg.agent_timeout_s > 0:
        raise bad("agent_timeout_s", "must be a positive number of seconds")
    if cfg.max_message_bytes < 1:
        raise bad("max_message_bytes", "must be positive")
    if cfg.max_reply_bytes < MIN_REPLY_BYTES:
        raise bad("max_reply_bytes", f"must be at least {MIN_REPLY_BYTES}")
    if cfg.shutdown_grace_s < 0:
        raise bad("shutdown_grace_s", "must not be negative")
    if cfg.log_format not in ("text", "json"):
        raise bad("log_format", f"must be text or json, got {cfg.log_format!r}")
    if cfg.log_level.lower() not in LOG_LEVELS:
        raise bad("log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {cfg.log_level!r}")
    for name, url in (("amqp_url", cfg.amqp_url), ("records_url", cfg.records_url)):
        problem = url_problem(url) if url else None
        if problem:
            raise bad(name, problem)
    if cfg.records_url and urlsplit(cfg.records_url).scheme not in ("postgresql", "postgres"):
        raise bad(
            "records_url",
            f"must start with postgresql:// (got {mask_url(cfg.records_url)!r})",
        )
    if cfg.delivery_limit < 1:
        raise bad("delivery_limit", "must be at least 1")
    if not 0 <= cfg.queue_max_priority <= 255:
        raise bad("queue_max_priority", "must be between 0 (off) and 255")
    _host, sep, port = cfg.metrics_addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise bad("metrics_addr", f"must be host:port, got {cfg.metrics_addr!r}")
    if not re.match(r"^[A-Za-z0-9._-]{1,100}$", cfg.worker_id):
        raise bad("worker_id", "must be 1-100 characters of letters, digits, '.', '_' or '-'")
    if cfg.agents and ":" not in cfg.agents:
        raise bad("agents", f"must be module:attribute, got {cfg.agents!r}")


def describe(cfg: Config) -> dict[str, Any]:
    """The configuration as logged at start (password masked)."""
    out = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    out["amqp_url"] = cfg.safe_url
    out["records_url"] = mask_url(cfg.records_url)
    return out
