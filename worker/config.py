"""Configuration: `INTENTUS_*` environment variables, each with a matching CLI flag.

Each setting is declared once, as a field of `Config`; its variable, flag, `--help` line and
checks follow from that declaration (`OPTIONS`). Flags win over the environment, which wins
over the defaults. Every value is checked here, once; a bad one is a ConfigError naming the
variable (exit code 2).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from typing import Any, Literal, get_args, get_origin, get_type_hints
from urllib.parse import unquote, urlsplit

from runtime import defaults
from worker.errors import ConfigError

# RabbitMQ's default max_message_size (3.10 on). The broker does not tell a client its limit,
# and a publish over it closes the channel (redelivering every unacked delivery), so the
# worker checks a reply's size against its own setting before publishing.
MAX_REPLY_BYTES = 128 * 1024 * 1024
MIN_REPLY_BYTES = 4096  # room for the RESPONSE_TOO_LARGE answer itself

QueueType = Literal["quorum", "classic"]
LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]


def setting(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    above_low: bool = False,
    check: Callable[[Any], str | None] | None = None,
    factory: Callable[[], Any] | None = None,
    fold_case: bool = False,
) -> Any:
    """A Config field with what the flag, `--help`, the docs and validation need to know.

    `low`/`high` bound a number (`above_low`: strictly above `low`); `check` returns why a
    value is refused, or None; `factory` computes the default at start (an empty value means
    it too); `fold_case` reads an enumeration case-insensitively."""
    rules = {
        "help": help,
        "low": low,
        "high": high,
        "above_low": above_low,
        "check": check,
        "fold_case": fold_case,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=rules)
    return field(default=default, metadata=rules)


def _amqp_url(url: str) -> str | None:
    if urlsplit(url).scheme not in ("amqp", "amqps"):
        return f"must start with amqp:// or amqps:// (got {mask_url(url)!r})"
    return url_problem(url)


def _records_url(url: str) -> str | None:
    if not url:
        return None
    problem = url_problem(url)
    if problem is None and urlsplit(url).scheme not in ("postgresql", "postgres"):
        problem = f"must start with postgresql:// (got {mask_url(url)!r})"
    return problem


def _queue(name: str) -> str | None:
    if not name or len(name.encode()) > 200:
        return "must be a non-empty name of at most 200 bytes"
    if name.startswith("amq."):
        return "names starting with 'amq.' are reserved by the broker"
    return None


def _host_port(addr: str) -> str | None:
    _host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        return f"must be host:port, got {addr!r}"
    return None


def _worker_id(worker_id: str) -> str | None:
    if not re.match(r"^[A-Za-z0-9._-]{1,100}$", worker_id):
        return "must be 1-100 characters of letters, digits, '.', '_' or '-'"
    return None


def _agents(spec: str) -> str | None:
    return f"must be module:attribute, got {spec!r}" if spec and ":" not in spec else None


@dataclass(frozen=True)
class Config:
    """Every setting, declared once: its type (a `Literal` for an enumeration), default, help
    and rules. The environment variable and flag follow from the name (`queue_type`:
    `INTENTUS_QUEUE_TYPE`, `--queue-type`); OPTIONS, `--help`, validation and the check of
    docs/contract.md (tests/unit/test_contract_doc.py) all read this class."""

    amqp_url: str = setting(
        "amqp://guest:guest@localhost:5672/%2F",
        "broker URL (amqp:// or amqps://)",
        check=_amqp_url,
    )
    queue: str = setting("intentus.requests", "request queue", check=_queue)
    queue_type: QueueType = setting("quorum", "request queue type")
    reply_queue: str = setting("intentus.replies", 'default reply queue ("" disables)')
    records_dir: str = setting(".intentusnet/records", "execution records folder")
    records_url: str = setting(
        "",
        "PostgreSQL execution store (postgresql://...; unset: files in the records folder)",
        check=_records_url,
    )
    agents: str = setting(
        "", "agents as module:attribute (default: built-in demo agents)", check=_agents
    )
    policy_file: str = setting("", "policy JSON file")
    concurrency: int = setting(8, "requests routed at once", low=1, high=1024)
    prefetch: int = setting(
        0,
        "unacknowledged deliveries held at once (0: 64, or 1024 when an agent is async)",
        low=0,
        high=65535,
    )
    agent_timeout_s: float = setting(
        defaults.AGENT_TIMEOUT_S, "default per-agent deadline (seconds)", low=0, above_low=True
    )
    max_message_bytes: int = setting(
        defaults.MAX_MESSAGE_BYTES, "largest request body accepted", low=1
    )
    max_reply_bytes: int = setting(
        MAX_REPLY_BYTES,
        "largest reply published (at most the broker's max_message_size); a larger"
        " response is recorded whole and answered RESPONSE_TOO_LARGE",
        low=MIN_REPLY_BYTES,
    )
    metrics_addr: str = setting(
        "127.0.0.1:9464", "host:port for /metrics, /healthz, /readyz", check=_host_port
    )
    shutdown_grace_s: float = setting(30.0, "time to finish in-flight work on SIGTERM", low=0)
    log_format: LogFormat = setting("text", "log format")
    log_level: LogLevel = setting("info", "log level", fold_case=True)
    worker_id: str = setting(
        "",
        "unique id of this worker (default hostname-pid)",
        check=_worker_id,
        factory=defaults.default_worker_id,
    )
    delivery_limit: int = setting(
        20, "quorum queues: deliveries before the broker dead-letters a message", low=1
    )
    queue_max_priority: int = setting(
        0,
        "classic queues: declare x-max-priority (0 = no priorities; 9 keeps all four apart)",
        low=0,
        high=255,
    )

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


@dataclass(frozen=True)
class Option:
    """One setting as the command line, the environment and the docs see it (from Config)."""

    name: str
    kind: type
    """int, float or str (an enumeration is a str with `choices`)."""
    default: Any
    """The default; "" when it is computed at start."""
    help: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    above_low: bool = False
    check: Callable[[Any], str | None] | None = None
    fold_case: bool = False
    computed: bool = False
    """The default is computed at start; an empty value means it too."""

    @property
    def env(self) -> str:
        return f"INTENTUS_{self.name.upper()}"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def help_text(self) -> str:
        """The flag's `--help` line: what it is, its values, its default, and its variable."""
        values = f": {_either(self.choices)}" if self.choices else ""
        shown = f"{self.default:g}" if isinstance(self.default, float) else self.default
        default = f" (default: {shown})" if shown not in ("", None) else ""
        # argparse expands %-placeholders in help: the default URL's %2F must stay literal.
        return f"{self.help}{values}{default} [env {self.env}]".replace("%", "%%")

    def convert(self, raw: str) -> Any:
        """The value of a flag or variable, typed; a ConfigError naming it if it is none."""
        if self.kind is int:
            try:
                return int(raw.strip())
            except ValueError:
                raise option_error(self.name, f"expected an integer, got {raw!r}") from None
        if self.kind is float:
            try:
                return float(raw.strip())
            except ValueError:
                raise option_error(self.name, f"expected a number, got {raw!r}") from None
        return raw.lower() if self.fold_case else raw

    def problem(self, value: Any) -> str | None:
        """Why `value` is refused, or None."""
        if self.choices and value not in self.choices:
            return f"must be {_either(self.choices)}, got {value!r}"
        low, high = self.low, self.high
        too_low = low is not None and (value <= low if self.above_low else value < low)
        if too_low or (high is not None and value > high):
            if low is not None and high is not None:
                return f"must be between {low:g} and {high:g}"
            if high is not None:
                return f"must be at most {high:g}"
            return f"must be {'more than' if self.above_low else 'at least'} {low:g}"
        return self.check(value) if self.check is not None else None


def _either(choices: tuple[str, ...]) -> str:
    """("a", "b", "c") as "a, b or c"."""
    *rest, last = choices
    return f"{', '.join(rest)} or {last}" if rest else last


def _option(f: Field[Any], hint: Any) -> Option:
    choices = get_args(hint) if get_origin(hint) is Literal else ()
    return Option(
        name=f.name,
        kind=str if choices else hint,
        default=f.default if f.default is not MISSING else "",
        help=f.metadata["help"],
        choices=choices,
        low=f.metadata["low"],
        high=f.metadata["high"],
        above_low=f.metadata["above_low"],
        check=f.metadata["check"],
        fold_case=f.metadata["fold_case"],
        computed=f.default_factory is not MISSING,
    )


_HINTS = get_type_hints(Config)
OPTIONS: dict[str, Option] = {f.name: _option(f, _HINTS[f.name]) for f in fields(Config)}

DEFAULT_AMQP_URL: str = OPTIONS["amqp_url"].default
DEFAULT_QUEUE: str = OPTIONS["queue"].default

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


def load(args: argparse.Namespace | None = None, env: dict[str, str] | None = None) -> Config:
    """Defaults ← environment ← flags, then validated."""
    env = dict(os.environ if env is None else env)
    values: dict[str, Any] = {}
    for name, opt in OPTIONS.items():
        raw = getattr(args, name, None) if args is not None else None
        if raw is None:
            raw = env.get(opt.env)
        if raw is None or (raw == "" and opt.computed):
            continue
        values[name] = opt.convert(raw)
    cfg = Config(**values)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Each setting against its declared rules, in declaration order: the first refused is a
    ConfigError naming it."""
    for name, opt in OPTIONS.items():
        problem = opt.problem(getattr(cfg, name))
        if problem:
            raise option_error(name, problem)


def describe(cfg: Config) -> dict[str, Any]:
    """The configuration as logged at start (password masked)."""
    out = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    out["amqp_url"] = cfg.safe_url
    out["records_url"] = mask_url(cfg.records_url)
    return out
