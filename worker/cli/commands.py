"""`intentus`: run the worker, send intents, inspect and replay records.

Exit codes: 0 success; 1 error (an error reply, a record not found or failing verification,
an unexpected failure); 2 bad usage or configuration; 3 broker unreachable or topology
conflict at start; 4 records folder unusable at start; 75 shutdown grace expired with work
unfinished; 130 second signal.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.envelope import Priority, RoutingStrategy
from runtime.errors import IntentusError
from worker import config as configuration
from worker.cli import records
from worker.config import url_password
from worker.errors import (
    EXIT_CONFIG,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_SECOND_SIGNAL,
    ConfigError,
    WorkerError,
)

if TYPE_CHECKING:
    from worker.service import Worker

log = logging.getLogger("intentus.cli")


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
    s.add_argument("--strategy", choices=[s.value for s in RoutingStrategy], type=str.upper)
    s.add_argument("--target", help="targetAgent")
    s.add_argument(
        "--fallback", action="append", default=[], help="a fallbackAgents entry (repeatable)"
    )
    s.add_argument("--request-id", help="metadata.requestId (default: a new unique id)")
    s.add_argument("--tag", action="append", default=[], help="a context tag (repeatable)")
    s.add_argument(
        "--priority",
        choices=[p.value for p in Priority],
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
        help="exit once the broker confirmed the request; print its requestId and the "
        "correlation id its reply will carry (the requestId when it fits in 255 bytes)",
    )
    configuration.add_arguments(s, ["amqp_url", "queue"])

    records.add_parser(sub, _Parser)
    from worker.cli import dlq

    dlq.add_parser(sub, _Parser)

    from worker.cli import contract

    contract.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _run(argv)
    except BrokenPipeError:
        # The reader left early (`intentus ... | head`): nothing more can be said on stdout.
        # Point it at /dev/null so the interpreter's final flush cannot fail again; exit 1
        # as Python itself does for a broken pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, where a broken pipe is caught, not at exit
        return code
    except WorkerError as exc:
        print(f"intentus: {exc}", file=sys.stderr)
        return exc.exit_code
    except IntentusError as exc:  # RecordNotFound among them
        print(f"intentus: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def cmd_worker(args: argparse.Namespace) -> int:
    from worker import logs
    from worker.loader import agents_source, load_agents, load_policy_file
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
        return serve(worker)
    except WorkerError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except Exception:
        log.exception("worker failed")
        return EXIT_ERROR


def settle_startup_objects() -> None:
    """Move what start-up made (modules, agents, the runtime, pika) out of the cycle
    collector's generations: it lives as long as the process, and a full collection no longer
    walks it, so its pauses shrink to what requests left behind (measured under load: the
    longest pause 35 ms before, see docs/benchmarks.md). Start-up garbage is collected first,
    so none of it is kept. The process's, so the CLI's: an application embedding a Worker
    manages its own collector."""
    gc.collect()
    gc.freeze()


def serve(worker: Worker) -> int:
    """Run the worker until SIGTERM or SIGINT, then stop it within its grace period; a second
    signal exits at once (exit 130). Signals are the process's, so they are handled here and
    never by the Worker, which an application may embed."""
    stop = threading.Event()
    signals = 0

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            os.write(2, b"second signal: exiting now\n")
            os._exit(EXIT_SECOND_SIGNAL)
        log.info(
            "received %s: finishing in-flight work (grace %.0f s)",
            signal.Signals(signum).name,
            worker.cfg.shutdown_grace_s,
        )
        stop.set()

    # After start() (which declares the topology), as before: a signal while the broker is
    # being reached keeps its default meaning (Ctrl-C: exit 130). start() returns before the
    # connection that consumes is even open, so no delivery can arrive in between.
    worker.start()
    settle_startup_objects()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Short waits: the signal handler runs on this thread, between them.
    while not stop.wait(0.2) and not worker.wait(0.2):
        pass
    return worker.stop()


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
    from worker.clients.blocking import IntentusClient
    from worker.clients.calls import correlation_id_for
    from worker.intents import new_request_id

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
                # Chosen here to be printed: the reply (on the default reply queue) carries
                # this correlation id, the requestId itself whenever it fits the property.
                request_id = args.request_id or new_request_id()
                correlation_id = correlation_id_for(request_id)
                options.update(request_id=request_id, correlation_id=correlation_id)
                client.send_intent(name, payload, wait=False, **options)
                published = {
                    "published": True,
                    "queue": cfg.queue,
                    "requestId": request_id,
                    "correlationId": correlation_id,
                }
                print(json.dumps(published))
                return EXIT_OK
            response = client.send_intent(name, payload, **options)
        except ValueError as exc:  # a malformed --traceparent
            raise ConfigError(str(exc)) from None
    print(response.model_dump_json(indent=2))
    return EXIT_OK if response.ok else EXIT_ERROR


def _dlq(args: argparse.Namespace) -> int:
    from worker.cli import dlq

    return dlq.main(args)


def _contract(args: argparse.Namespace) -> int:
    from worker.cli import contract

    return contract.main(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "worker": cmd_worker,
    "send": cmd_send,
    "records": records.cmd_records,
    "dlq": _dlq,
    "contract": _contract,
}
