"""`intentus dlq`: list, show, requeue and purge the dead letters in `<queue>.dlq`.

Reading is non-destructive: messages are taken with basic.get, held unacked while the command
runs, and handed back by closing the channel. Held messages are invisible to any other
consumer of the DLQ until then, and a command sees only the messages that were ready when it
looked. A requeued message is acked in the DLQ only after the broker confirmed its copy in
the request queue, so a crash in between leaves a duplicate, never a loss.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import json
import sys
import time
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TextIO

from worker import config as configuration
from worker.amqp import DeadLetterQueue, HeldMessage
from worker.errors import EXIT_ERROR, EXIT_OK, ConfigError, PublishFailed

REASON_HEADER = "x-intentus-reject-reason"
DEAD_LETTERED_AT_HEADER = "x-intentus-dead-lettered-at"
DEFAULT_LIMIT = 1000

# Headers that describe the dead-lettering, not the request: a requeued copy starts clean.
_DEAD_LETTER_HEADERS = frozenset(
    {
        REASON_HEADER,
        DEAD_LETTERED_AT_HEADER,
        "x-intentus-execution-id",
        "x-intentus-original-queue",
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-delivery-count",
    }
)


def jsonable(value: Any) -> Any:
    """AMQP header values (bytes, timestamps, decimals, nested tables) as JSON values."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) and value else None


def _epoch(value: Any) -> float | None:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


@dataclass(slots=True)
class DeadLetter:
    """One held dead letter, read without pika types."""

    message: HeldMessage

    @property
    def headers(self) -> dict[str, Any]:
        headers = self.message.properties.get("headers")
        return headers if isinstance(headers, dict) else {}

    @property
    def _death(self) -> dict[str, Any]:
        deaths = self.headers.get("x-death")
        if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
            return deaths[0]
        return {}

    @property
    def reason(self) -> str:
        """The worker's reject reason; for a broker dead letter (delivery limit, TTL), the
        broker's reason prefixed with `broker:`."""
        own = _text(self.headers.get(REASON_HEADER))
        if own:
            return own
        broker = _text(self._death.get("reason")) or _text(self.headers.get("x-first-death-reason"))
        return f"broker:{broker}" if broker else "unknown"

    @property
    def request_id(self) -> str | None:
        """metadata.requestId from the body if it is readable, else message_id, else
        correlation_id."""
        try:
            body = json.loads(self.message.body)
        except (ValueError, UnicodeDecodeError):
            body = None
        if isinstance(body, dict):
            metadata = body.get("metadata")
            if isinstance(metadata, dict):
                rid = metadata.get("requestId")
                if isinstance(rid, str) and rid:
                    return rid
        props = self.message.properties
        return _text(props.get("message_id")) or _text(props.get("correlation_id"))

    @property
    def dead_lettered_at(self) -> float | None:
        """When it was dead-lettered (the worker's header, the broker's x-death time), else
        when it was first published (the `timestamp` property), as epoch seconds."""
        for value in (
            self.headers.get(DEAD_LETTERED_AT_HEADER),
            self._death.get("time"),
            self.message.properties.get("timestamp"),
        ):
            moment = _epoch(value)
            if moment is not None:
                return moment
        return None

    def matches(self, ident: str) -> bool:
        props = self.message.properties
        return ident in (
            self.request_id,
            _text(props.get("message_id")),
            _text(props.get("correlation_id")),
            _text(self.headers.get("x-intentus-execution-id")),
        )

    def summary(self, now: float) -> dict[str, Any]:
        at = self.dead_lettered_at
        return {
            "requestId": self.request_id,
            "reason": self.reason,
            "deadLetteredAt": (
                datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds") if at else None
            ),
            "ageSeconds": round(max(0.0, now - at), 3) if at is not None else None,
            "bytes": len(self.message.body),
        }

    def detail(self, now: float) -> dict[str, Any]:
        props = {k: jsonable(v) for k, v in self.message.properties.items() if k != "headers"}
        out = self.summary(now)
        out["properties"] = props
        out["headers"] = jsonable(self.headers)
        out["redelivered"] = self.message.redelivered
        try:
            out["body"] = self.message.body.decode("utf-8")
            out["bodyEncoding"] = "utf-8"
        except UnicodeDecodeError:
            out["body"] = base64.b64encode(self.message.body).decode("ascii")
            out["bodyEncoding"] = "base64"
        return out

    @property
    def user_id(self) -> str | None:
        """The broker-validated user that sent the request (policy is decided on it)."""
        value = self.message.properties.get("user_id")
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return value if isinstance(value, str) and value else None

    def identity_kept_by(self, connection_user: str | None) -> bool:
        """Whether a copy published as `connection_user` can carry this letter's user_id: the
        broker accepts a user_id only from that user's own connection. Dropping it would let
        the request run as nobody, past a policy that refused its user."""
        return self.user_id is None or self.user_id == connection_user

    def requeue_properties(self) -> dict[str, Any]:
        """The original properties for the copy sent back to the request queue, user_id
        included (check `identity_kept_by` first)."""
        props = dict(self.message.properties)
        headers = {k: v for k, v in self.headers.items() if k not in _DEAD_LETTER_HEADERS}
        props["headers"] = headers or None
        props["delivery_mode"] = 2
        props.pop("expiration", None)
        return props


def select(
    letters: list[DeadLetter], *, ids: list[str], reason_glob: str | None, every: bool
) -> list[DeadLetter]:
    """The letters named by id (requestId, messageId, correlationId or executionId) or whose
    reason matches the glob, or all of them."""
    if every:
        return list(letters)

    def wanted(letter: DeadLetter) -> bool:
        if any(letter.matches(i) for i in ids):
            return True
        return reason_glob is not None and fnmatch.fnmatchcase(letter.reason, reason_glob)

    return [letter for letter in letters if wanted(letter)]


def printable(text: str) -> str:
    """`text` for a terminal: control characters (C0, DEL, C1) escaped as `repr` writes them
    (`\\x00`, `\\n`, `\\x9b`), everything else as it is. Ids and reasons come from the message,
    and an AMQP short string may carry any of them."""
    if text.isprintable():
        return text
    return "".join(repr(ch)[1:-1] if unicodedata.category(ch) == "Cc" else ch for ch in text)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _table(rows: list[dict[str, Any]], out: TextIO) -> None:
    titles = ["AGE", "REQUEST ID", "REASON"]
    cells = [
        [_age(r["ageSeconds"]), printable(r["requestId"] or "-"), printable(r["reason"])]
        for r in rows
    ]
    widths = [max(len(t), *(len(c[i]) for c in cells)) for i, t in enumerate(titles)]
    for row in [titles, *cells]:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")


# -- the command -----------------------------------------------------------------------------


def add_parser(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """`intentus dlq ...` under the CLI's subcommands."""
    d = sub.add_parser(
        "dlq",
        help="list, show, requeue or purge dead letters",
        description="Work with the dead letters in <queue>.dlq.",
    )
    dsub = d.add_subparsers(dest="dlq_command", required=True, parser_class=parser_class)

    def dp(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = dsub.add_parser(name, help=help_text, description=help_text)
        configuration.add_arguments(p, ["amqp_url", "queue"])
        return p

    ls = dp("list", "list dead letters, oldest first: age, requestId, reason")
    ls.add_argument("--json", action="store_true", help="print a JSON array")
    ls.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        help=f"at most this many (default {DEFAULT_LIMIT})",
    )
    show = dp("show", "print one dead letter with its properties, headers and body")
    show.add_argument("id", help="requestId, messageId, correlationId or executionId")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="how many to look through")
    rq = dp("requeue", "send dead letters back to the request queue (publisher confirms)")
    rq.add_argument("ids", nargs="*", help="requestIds (or messageId, correlationId, executionId)")
    rq.add_argument("--reason", help="every dead letter whose reason matches this glob")
    rq.add_argument("--all", action="store_true", help="every dead letter")
    rq.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="how many to look through")
    pg = dp("purge", "delete every dead letter (asks first)")
    pg.add_argument("--yes", action="store_true", help="do not ask (needed without a terminal)")


def main(args: argparse.Namespace, out: TextIO | None = None, stdin: TextIO | None = None) -> int:
    out = out or sys.stdout
    stdin = stdin or sys.stdin
    cfg = configuration.load(args)
    command = args.dlq_command
    if command != "purge" and args.limit < 1:
        raise ConfigError("--limit must be at least 1")
    if command == "requeue" and not (args.ids or args.reason or args.all):
        raise ConfigError("name requestIds, or give --reason GLOB or --all")
    if command == "requeue" and args.all and (args.ids or args.reason):
        raise ConfigError("--all selects everything: give no ids or --reason with it")
    if command == "purge":
        return _purge(cfg, yes=args.yes, out=out, stdin=stdin)
    with DeadLetterQueue(cfg) as dlq:
        letters = [DeadLetter(m) for m in dlq.take(args.limit)]
        now = time.time()
        if command == "list":
            rows = [letter.summary(now) for letter in letters]
            if args.json:
                out.write(json.dumps(rows, indent=2) + "\n")
            elif rows:
                _table(rows, out)
            else:
                out.write(f"{cfg.dlq} is empty\n")
            return EXIT_OK
        if command == "show":
            found = [letter for letter in letters if letter.matches(args.id)]
            if not found:
                print(f"intentus: no dead letter {args.id!r} in {cfg.dlq}", file=sys.stderr)
                return EXIT_ERROR
            details = [letter.detail(now) for letter in found]
            if args.json:
                out.write(json.dumps(details[0] if len(details) == 1 else details, indent=2) + "\n")
            else:
                for detail in details:
                    _show(detail, out)
            return EXIT_OK
        return _requeue(
            dlq,
            queue=cfg.queue,
            chosen=select(letters, ids=args.ids, reason_glob=args.reason, every=args.all),
            out=out,
        )


def _show(detail: dict[str, Any], out: TextIO) -> None:
    for key in ("requestId", "reason", "deadLetteredAt", "redelivered", "bytes"):
        out.write(f"{key}: {printable(str(detail[key]))}\n")
    out.write("properties:\n")
    for key, value in sorted(detail["properties"].items()):
        out.write(f"  {key}: {json.dumps(value)}\n")
    out.write("headers:\n")
    for key, value in sorted(detail["headers"].items()):
        out.write(f"  {key}: {json.dumps(value)}\n")
    out.write(f"body ({detail['bodyEncoding']}):\n{detail['body']}\n")


def _requeue(dlq: DeadLetterQueue, *, queue: str, chosen: list[DeadLetter], out: TextIO) -> int:
    done = 0
    refused = 0
    for letter in chosen:
        if not letter.identity_kept_by(dlq.user):
            refused += 1
            print(
                f"intentus: not requeued {printable(letter.request_id or '?')}: it was sent as user_id "
                f"{letter.user_id!r}, which the broker accepts only from a connection logged in "
                f"as {letter.user_id!r} (this one is "
                f"{repr(dlq.user) if dlq.user else 'a certificate login'}); requeue it connected "
                "as that user, or it stays in the DLQ",
                file=sys.stderr,
            )
            continue
        try:
            dlq.requeue(letter.message, letter.requeue_properties())
        except PublishFailed as exc:
            print(
                f"intentus: requeue stopped at {printable(letter.request_id or '?')}: {exc}; "
                f"{len(chosen) - done} left in the DLQ",
                file=sys.stderr,
            )
            out.write(f"requeued {done} of {len(chosen)} to {queue}\n")
            return EXIT_ERROR
        done += 1
        out.write(f"requeued {printable(letter.request_id or '?')} ({printable(letter.reason)})\n")
    out.write(f"requeued {done} of {len(chosen)} to {queue}\n")
    if refused:
        print(
            f"intentus: {refused} left in the DLQ: their user_id cannot be kept by this connection",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_OK


def _purge(cfg: configuration.Config, *, yes: bool, out: TextIO, stdin: TextIO) -> int:
    if not yes and not stdin.isatty():
        raise ConfigError("purge without a terminal needs --yes")
    with DeadLetterQueue(cfg) as dlq:
        # The messages counted are held while the operator answers, and exactly those are
        # deleted: dead letters arriving meanwhile were never shown, so they stay.
        held = dlq.hold_ready()
        if not yes:
            out.write(f"delete all {held} ready messages in {cfg.dlq}? [y/N] ")
            out.flush()
            if stdin.readline().strip().lower() not in ("y", "yes"):
                out.write("nothing deleted\n")
                return EXIT_ERROR
        purged = dlq.delete_held()
    out.write(f"purged {purged} messages from {cfg.dlq}\n")
    return EXIT_OK
