"""`intentus`: run the worker, send intents, inspect and replay records.

Exit codes: 0 success; 1 error (an error reply, a record not found or failing verification,
an unexpected failure); 2 bad usage or configuration; 3 broker unreachable or topology
conflict at start; 4 records folder unusable at start; 75 shutdown grace expired with work
unfinished; 130 second signal.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from runtime import query
from runtime import replay as records
from runtime.errors import IntentusError, RecordStoreError
from runtime.reader import open_reader
from runtime.store import RecordStore
from worker import config as configuration
from worker.config import url_password
from worker.errors import EXIT_CONFIG, EXIT_ERROR, EXIT_OK, ConfigError, WorkerError

log = logging.getLogger("intentus.cli")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """`90s`, `15m`, `12h`, `30d`, `2w` → seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"invalid duration {text!r} (use e.g. 90s, 15m, 12h, 30d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_since(text: str) -> datetime:
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
    except ConfigError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--since: expected a duration (1h) or an ISO 8601 time, got {text!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 too; keep its one-line style
        self.print_usage(sys.stderr)
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="intentus",
        description="intentusnet-worker: deterministic intent routing over RabbitMQ.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    w = sub.add_parser(
        "worker",
        help="consume intents and route them to agents",
        description="Run the worker. Every option also reads its INTENTUS_* variable.",
    )
    configuration.add_arguments(w)

    s = sub.add_parser("send", help="send one intent and print its reply")
    s.add_argument("intent", help="intent name, optionally Name@Version")
    s.add_argument("--payload", default="{}", help="JSON object, or @file to read it from a file")
    s.add_argument(
        "--strategy", choices=["DIRECT", "FALLBACK", "BROADCAST", "PARALLEL"], type=str.upper
    )
    s.add_argument("--target", help="targetAgent")
    s.add_argument(
        "--fallback", action="append", default=[], help="a fallbackAgents entry (repeatable)"
    )
    s.add_argument("--request-id", help="metadata.requestId (default: a new unique id)")
    s.add_argument("--tag", action="append", default=[], help="a context tag (repeatable)")
    s.add_argument(
        "--priority",
        choices=["LOW", "NORMAL", "HIGH", "CRITICAL"],
        type=str.upper,
        help="context.priority, also sent as the AMQP priority (default NORMAL)",
    )
    s.add_argument("--traceparent", help="W3C traceparent header (default: a new trace)")
    s.add_argument(
        "--timeout",
        type=float,
        default=configuration.REPLY_TIMEOUT_S,
        help="seconds for the broker's confirm and the reply together (default %(default)g)",
    )
    s.add_argument(
        "--no-wait",
        action="store_true",
        help="exit once the broker confirmed the request; print its requestId",
    )
    configuration.add_arguments(s, ["amqp_url", "queue"])

    r = sub.add_parser("records", help="inspect, verify and replay execution records")
    rsub = r.add_subparsers(dest="records_command", required=True, parser_class=_Parser)

    def rp(name: str, help_text: str) -> argparse.ArgumentParser:
        p = rsub.add_parser(name, help=help_text, description=help_text)
        configuration.add_arguments(p, ["records_dir", "records_url"])
        return p

    ls = rp("list", "list records, newest first")
    ls.add_argument("--intent")
    ls.add_argument("--status", choices=["success", "error"])
    ls.add_argument("--agent")
    ls.add_argument("--since", help="a duration (1h, 7d) or an ISO 8601 time")
    ls.add_argument("--limit", type=int, default=50, help="at most this many (0: all; default 50)")
    ls.add_argument("--json", action="store_true", help="print a JSON array")
    show = rp("show", "print one record (by executionId, requestId or correlationId)")
    show.add_argument("id")
    rep = rp("replay", "print the recorded response, byte for byte (no agent runs)")
    rep.add_argument("id")
    ver = rp(
        "verify", "check integrity and routing determinism against the current agents and policy"
    )
    ver.add_argument("id", nargs="?")
    ver.add_argument("--all", action="store_true", help="verify every record")
    ver.add_argument("--json", action="store_true")
    configuration.add_arguments(ver, ["agents", "policy_file"])
    d = rp("diff", "show where two records differ")
    d.add_argument("a")
    d.add_argument("b")
    st = rp("stats", "counts by status, intent, agent and error code")
    st.add_argument("--json", action="store_true")
    gc = rp("gc", "delete records older than a duration")
    gc.add_argument("--older-than", required=True, help="e.g. 30d, 12h")
    gc.add_argument("--dry-run", action="store_true")

    from worker import dlq

    dlq.add_parser(sub, _Parser)

    from worker import contract

    contract.add_parser(sub)
    from worker import browser

    serve = rp("serve", browser.HELP)
    configuration.add_arguments(serve, ["agents", "policy_file"])
    browser.add_arguments(serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except WorkerError as exc:
        print(f"intentus: {exc}", file=sys.stderr)
        return exc.exit_code
    except IntentusError as exc:  # RecordNotFound among them
        print(f"intentus: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def agents_source(spec: str) -> str:
    """Where the agents come from, as said to the user."""
    return spec or "the built-in demo agents (runtime.demo; set INTENTUS_AGENTS for yours)"


def cmd_worker(args: argparse.Namespace) -> int:
    from worker import logs
    from worker.loader import load_agents, load_policy_file
    from worker.service import Worker

    try:
        cfg = configuration.load(args)
    except ConfigError:
        logs.setup("text")
        raise
    logs.setup(
        cfg.log_format,
        secrets=[p for p in (cfg.password, url_password(cfg.records_url)) if p],
        level=logging.getLevelName(cfg.log_level.upper()),
    )
    from worker import tracing

    tracing.configure_from_env()
    registry = load_agents(cfg.agents)
    log.info("agents from %s: %s", agents_source(cfg.agents), ", ".join(registry.names()))
    for agent in registry:
        log.debug(
            "agent %s: intents %s, node_id %s, node_priority %d, timeout_s %s",
            agent.name,
            ", ".join(str(c) for c in agent.capabilities),
            agent.node_id,
            agent.node_priority,
            "default" if agent.timeout_s is None else f"{agent.timeout_s:g}",
        )
    policy = load_policy_file(cfg.policy_file)
    try:
        worker = Worker(cfg, registry, policy)
    except WorkerError as exc:
        log.error("%s", exc)
        return exc.exit_code
    try:
        return worker.run()
    except WorkerError as exc:
        log.error("%s", exc)
        worker.runtime.close()  # nothing ran: leave no journal or temp folder behind
        return exc.exit_code
    except Exception:
        log.exception("worker failed")
        return EXIT_ERROR


def _payload(text: str) -> dict[str, Any]:
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--payload: cannot read {text[1:]}: {exc.strerror}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--payload: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError("--payload: must be a JSON object")
    return value


def cmd_send(args: argparse.Namespace) -> int:
    from worker.client import IntentusClient

    cfg = configuration.load(args)
    payload = _payload(args.payload)
    name, _, version = args.intent.partition("@")
    with IntentusClient(cfg.amqp_url, queue=cfg.queue, source="intentus-cli") as client:
        options: dict[str, Any] = {
            "version": version or "1.0",
            "strategy": args.strategy,
            "target_agent": args.target,
            "fallback_agents": args.fallback,
            "tags": args.tag,
            "priority": args.priority,
            "request_id": args.request_id,
            "traceparent": args.traceparent,
            "timeout": args.timeout,
        }
        try:
            if args.no_wait:
                request_id = client.send_intent(name, payload, wait=False, **options)
                print(json.dumps({"published": True, "queue": cfg.queue, "requestId": request_id}))
                return EXIT_OK
            response = client.send_intent(name, payload, **options)
        except ValueError as exc:  # a malformed --traceparent
            raise ConfigError(str(exc)) from None
    print(response.model_dump_json(indent=2))
    return EXIT_OK if response.ok else EXIT_ERROR


def _store(args: argparse.Namespace, *, deletes: bool = False) -> RecordStore:
    """The configured execution store, opened read-only (with `deletes`, for gc)."""
    cfg = configuration.load(args)
    try:
        return open_reader(
            records_dir=cfg.records_dir, records_url=cfg.records_url, deletes=deletes
        )
    except RecordStoreError as exc:
        option = "records_url" if cfg.records_url else "records_dir"
        raise configuration.option_error(option, str(exc)) from None


def cmd_records(args: argparse.Namespace) -> int:
    command = args.records_command
    store = _store(args, deletes=command == "gc")
    try:
        return RECORDS_COMMANDS[command](args, store)
    finally:
        store.close()


_LIST_COLUMNS = ["createdAt", "executionId", "requestId", "intent", "status", "agent", "errorCode"]
# `records list --json` rows: a record's summary, without the correlationId listings search by.
_LIST_FIELDS = tuple(key for key in query.ROW_FIELDS if key != "correlationId")


def records_list(args: argparse.Namespace, store: RecordStore) -> int:
    flt = query.RecordFilter(
        intent=args.intent,
        status=args.status,
        agent=args.agent,
        since=parse_since(args.since) if args.since else None,
    )
    found, _total = query.search(store, flt, limit=args.limit if args.limit > 0 else None)
    rows = [{key: row[key] for key in _LIST_FIELDS} for row in found]
    output(rows, as_json=args.json, lines=table(rows, _LIST_COLUMNS))
    return EXIT_OK


def records_show(args: argparse.Namespace, store: RecordStore) -> int:
    _execution_id, record = records.find(store, args.id)
    output(record, as_json=True, ensure_ascii=False)
    return EXIT_OK


def records_replay(args: argparse.Namespace, store: RecordStore) -> int:
    _execution_id, record = records.find(store, args.id)
    sys.stdout.buffer.write(records.replay(record) + b"\n")
    sys.stdout.buffer.flush()
    return EXIT_OK


def records_diff(args: argparse.Namespace, store: RecordStore) -> int:
    _a, first = records.find(store, args.a)
    _b, second = records.find(store, args.b)
    differences = records.diff(first, second)
    output(None, as_json=False, lines=differences)
    return EXIT_OK if not differences else EXIT_ERROR


def records_stats(args: argparse.Namespace, store: RecordStore) -> int:
    summary = records.stats(store)
    output(summary, as_json=args.json, lines=_stats_lines(summary))
    return EXIT_OK


def _stats_lines(summary: dict[str, Any]) -> Iterator[str]:
    yield f"records: {summary['records']} (unreadable: {summary['unreadable']})"
    for key in ("by_status", "by_kind", "by_intent", "by_agent", "by_error_code"):
        yield f"{key.removeprefix('by_').replace('_', ' ')}:"
        for name, count in sorted(summary[key].items(), key=lambda kv: (-kv[1], kv[0])):
            yield f"  {name:<32} {count}"


def records_gc(args: argparse.Namespace, store: RecordStore) -> int:
    cutoff = datetime.now(UTC) - timedelta(seconds=parse_duration(args.older_than))
    deleted, kept = query.delete_older_than(store, cutoff, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    output(
        None,
        as_json=False,
        lines=[f"{verb} {deleted} records older than {args.older_than}; kept {kept}"],
    )
    return EXIT_OK


def records_serve(args: argparse.Namespace, store: RecordStore) -> int:
    from worker import browser

    return browser.run(args, store, parse_time=parse_since)


def records_verify(args: argparse.Namespace, store: RecordStore) -> int:
    from worker.loader import load_agents, load_policy_file

    cfg = configuration.load(args)
    registry = load_agents(cfg.agents)
    policy = load_policy_file(cfg.policy_file)
    if args.id and args.all:
        raise ConfigError("give an ID or --all, not both")
    if args.id:
        execution_id, record = records.find(store, args.id)
        results = [records.verify(execution_id, record, registry, policy)]
    elif args.all:
        results = [
            records.verify(execution_id, record, registry, policy)
            for execution_id, record in records.iter_records(store)
        ]
    else:
        raise ConfigError("give an ID or --all")
    failed = [r for r in results if not r.ok]
    unchecked = [r for r in results if r.ok and records.ROUTING_UNCHECKED in r.notes]
    report = {
        "agents": cfg.agents or "runtime.demo:registry",
        "checked": len(results),
        "failed": len(failed),
        "problems": {r.execution_id: r.problems for r in failed},
        "routingUnchecked": [r.execution_id for r in unchecked],
    }
    lines = _verify_lines(args, cfg.agents, results, unchecked)
    output(report, as_json=args.json, lines=lines)
    return EXIT_OK if not failed else EXIT_ERROR


def _verify_lines(
    args: argparse.Namespace,
    agents: str,
    results: list[records.Verification],
    unchecked: list[records.Verification],
) -> Iterator[str]:
    yield f"routing checked against {agents_source(agents)}"
    for r in results:
        if not r.ok:
            for problem in r.problems:
                yield f"{r.execution_id}: {problem}"
        elif args.id:
            note = f" (integrity only: {_UNCHECKED_HINT})" if r in unchecked else ""
            yield f"{r.execution_id}: ok{note}"
    failed = sum(1 for r in results if not r.ok)
    yield f"verified {len(results)} records: {len(results) - failed} ok, {failed} failed"
    if unchecked and args.all:
        yield f"{len(unchecked)} of them integrity only: {_UNCHECKED_HINT}"


_UNCHECKED_HINT = f"{records.ROUTING_UNCHECKED} (use --agents or INTENTUS_AGENTS)"

_TITLES = {
    "createdAt": "CREATED",
    "executionId": "EXECUTION ID",
    "requestId": "REQUEST ID",
    "errorCode": "ERROR",
}


def output(
    value: Any, *, as_json: bool, lines: Iterable[str] = (), ensure_ascii: bool = True
) -> None:
    """The one way commands print: `value` as indented JSON, or the text `lines`."""
    if as_json:
        sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=ensure_ascii) + "\n")
        return
    for line in lines:
        sys.stdout.write(line + "\n")


def table(rows: list[dict[str, Any]], columns: list[str]) -> Iterator[str]:
    """`rows` as aligned text columns under titles ("no records" when there are none)."""
    if not rows:
        yield "no records"
        return
    titles = [_TITLES.get(c, c.upper()) for c in columns]
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(t), *(len(row[i]) for row in cells)) for i, t in enumerate(titles)]
    for row in [titles, *cells]:
        yield "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()


def _dlq(args: argparse.Namespace) -> int:
    from worker import dlq

    return dlq.main(args)


def _contract(args: argparse.Namespace) -> int:
    from worker import contract

    return contract.main(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "worker": cmd_worker,
    "send": cmd_send,
    "records": cmd_records,
    "dlq": _dlq,
    "contract": _contract,
}

RECORDS_COMMANDS: dict[str, Callable[[argparse.Namespace, RecordStore], int]] = {
    "list": records_list,
    "show": records_show,
    "replay": records_replay,
    "verify": records_verify,
    "diff": records_diff,
    "stats": records_stats,
    "gc": records_gc,
    "serve": records_serve,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
