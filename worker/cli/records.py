"""`intentus records ...`: inspect, verify, replay and collect execution records.

Every subcommand opens the configured store read-only (`runtime.stores.reader`); only `gc` may delete.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from runtime import query
from runtime import replay as records
from runtime.errors import RecordStoreError
from runtime.stores.base import RecordStore
from runtime.stores.reader import open_reader
from worker import config as configuration
from worker.cli.output import output, parse_duration, parse_since, table
from worker.errors import EXIT_ERROR, EXIT_OK, ConfigError
from worker.loader import agents_source


def add_parser(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    r = sub.add_parser("records", help="inspect, verify and replay execution records")
    rsub = r.add_subparsers(dest="records_command", required=True, parser_class=parser_class)

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
    from worker.browser import server as browser

    serve = rp("serve", browser.HELP)
    configuration.add_arguments(serve, ["agents", "policy_file"])
    browser.add_arguments(serve)


def open_store(args: argparse.Namespace, *, deletes: bool = False) -> RecordStore:
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
    store = open_store(args, deletes=command == "gc")
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
    from worker.browser import server as browser

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
        results = [records.verify(execution_id, record, registry=registry, policy=policy)]
    elif args.all:
        results = [
            records.verify(execution_id, record, registry=registry, policy=policy)
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
    lines = _verify_lines(args, agents=cfg.agents, results=results, unchecked=unchecked)
    output(report, as_json=args.json, lines=lines)
    return EXIT_OK if not failed else EXIT_ERROR


def _verify_lines(
    args: argparse.Namespace,
    *,
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
