"""The worker's lifecycle: start in order, run the per-message pipeline, stop in order.

Threads: the AMQP I/O thread (owns pika), INTENTUS_CONCURRENCY pipeline threads (route one
delivery each), the runtime's agent threads and record committer, the HTTP thread and the
monitor. Order per message: route → record durable → reply confirmed → ack. Shutdown: stop
consuming, hand back deliveries not yet started, finish the rest within the grace period,
close. A library object: process signals and exit codes are the caller's (the CLI's).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from runtime import supervision
from runtime.engine import Outcome
from runtime.errors import RecordExists, RecordStoreError, RecordUnstorable
from runtime.invoker import Abandoned
from runtime.middleware import Middleware
from runtime.policy import Policy
from runtime.registry import AgentRegistry
from worker import tracing
from worker.amqp import ConsumerConnection
from worker.config import Config, describe, with_prefetch
from worker.error_replies import unstorable
from worker.errors import EXIT_ERROR, EXIT_GRACE_EXPIRED, EXIT_OK
from worker.health import HealthServer
from worker.metrics import Metrics
from worker.middleware import Chain, WorkerMiddleware, route_middleware
from worker.parking import ParkingLot
from worker.pipeline import Decision, context_of, redecide
from worker.replies import Responder
from worker.routing_threads import RoutingThreads
from worker.runtime_setup import open_runtime
from worker.store_gate import StoreGate
from worker.transport import Delivery, Listeners, Transport

log = logging.getLogger("intentus.worker")

_TICK_S = 0.5


class Worker:
    """A worker: `start()` consumes on its own threads, `stop(grace)` finishes in-flight work
    and returns the exit code; `with Worker(...) as worker:` does both. `middleware` holds
    `WorkerMiddleware`s (the chain, after metrics and tracing) and runtime `Middleware`s."""

    def __init__(
        self,
        cfg: Config,
        registry: AgentRegistry,
        policy: Policy | None = None,
        middleware: Sequence[Middleware] = (),
        *,
        transport: Transport | None = None,
    ) -> None:
        cfg = with_prefetch(cfg, any_async=any(agent.is_async for agent in registry))
        self.cfg = cfg
        self.registry = registry
        # Made before the runtime, whose stores start their threads as they open.
        self._threads_watch = supervision.Watch()
        rules = {r.id for r in policy.document.rules} if policy else None
        self.metrics = Metrics(registry, rules, queue=cfg.queue)
        members: list[Middleware] = [self.metrics]
        if tracing.enabled():
            members.append(tracing.Tracing(cfg.queue))
        members += middleware
        self.hooks: WorkerMiddleware = Chain(members)
        self.threads = RoutingThreads(cfg.concurrency, take=self._take)
        self.runtime = open_runtime(
            cfg,
            registry,
            policy=policy,
            middleware=route_middleware(members),
            observer=self.hooks,
            carry_on=self.threads.carry_on,
            resume=self.threads.put,
        )
        try:
            self._made(cfg, transport)
        except BaseException:
            self.runtime.close()  # its store's threads and temp folder
            raise

    def _made(self, cfg: Config, transport: Transport | None) -> None:
        """The rest of the constructor, once the runtime is open."""
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._shutdown_lock = threading.Lock()
        self._exit_code: int | None = None
        self._started = False
        self._stopping = False
        self._monitor: threading.Thread | None = None
        self.store_gate = StoreGate(pause=self._request_pause)
        self.parking = ParkingLot(self.runtime, self._unpark)
        self.conn: Transport = transport if transport is not None else ConsumerConnection(cfg)
        self.responder = Responder(
            self.conn, self.hooks, finished=self._done, max_reply_bytes=cfg.max_reply_bytes
        )
        self.conn.bind(
            Listeners(
                on_delivery=self._on_delivery,
                on_state=self._on_consuming,
                on_reconnect=self._on_reconnect,
                on_cancel=self._on_cancel,
            )
        )
        host, port = cfg.metrics_host_port
        self.http = HealthServer(
            host, port, registry=self.metrics.registry, readiness=self.readiness
        )

    # -- readiness -----------------------------------------------------------------------
    def readiness(self) -> tuple[bool, list[str]]:
        reasons = []
        if self._stopping:
            reasons.append("shutting down")
        if not self.conn.consuming and not self._stopping:
            reasons.append("not consuming (broker disconnected or paused)")
        if self.conn.cancelled:
            reasons.append("consumer cancelled by the broker; declaring the queue again")
        if not self.store_gate.ok:
            reasons.append("execution store not writable")
        for name, exc in self._threads_watch.deaths():
            reasons.append(f"internal thread {name} died ({type(exc).__name__}: {exc})")
        abandoned = self.runtime.invoker.abandoned()
        if abandoned >= self.cfg.concurrency:
            reasons.append(f"{abandoned} agent threads stuck past their deadline")
        return not reasons, reasons

    @property
    def inflight(self) -> int:
        """Deliveries received and not finished with yet."""
        return self._inflight

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Declare the queues and start consuming on the worker's threads; returns at once.
        A broker or store that cannot be used raises (a WorkerError) and leaves nothing open."""
        if self._started or self._exit_code is not None:
            raise RuntimeError("a Worker starts once, and not once stopped")
        self._started = True
        try:
            self.conn.declare()
        except BaseException:
            self._discard()
            raise
        log.info("starting worker %s", self.cfg.worker_id, extra={"config": describe(self.cfg)})
        self.http.start()
        self.parking.start()
        self.threads.start()
        self.hooks.started(self)
        self.conn.start()
        self._monitor = threading.Thread(target=self._watch, name="intentus-monitor", daemon=True)
        self._monitor.start()
        log.info(
            "worker %s consuming %s with %d agents; metrics on http://%s/metrics",
            self.cfg.worker_id,
            self.cfg.queue,
            len(self.registry),
            self.cfg.metrics_addr,
        )

    def stop(self, grace: float | None = None) -> int:
        """Stop consuming, finish in-flight work within `grace` seconds (default: the
        configured shutdown grace), close; returns the exit code (0: clean, 1: an internal
        thread died, 75: the grace expired with work unfinished). Blocks until stopped; once
        stopped, returns the same code again."""
        self._stop.set()
        with self._shutdown_lock:
            if self._exit_code is None:
                self._exit_code = self._shutdown(grace) if self._started else self._discard()
                self._stopped.set()
            return self._exit_code

    def _discard(self) -> int:
        """Close what the constructor opened, for a worker that never ran (or could not
        start): nothing ran, so no journal or temp folder is left behind."""
        if self._exit_code is None:
            self._exit_code = EXIT_OK
            self._stopped.set()
            self.http.httpd.server_close()
            self.runtime.close()
        return self._exit_code

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker has stopped (by `stop()`, or by itself when an internal
        thread died); False if `timeout` passed first."""
        return self._stopped.wait(timeout)

    def _watch(self) -> None:
        """(monitor thread) Keep the worker's state current; stop it if it cannot go on."""
        while not self._stop.wait(_TICK_S):
            if not self._tick():
                self.stop()
                return

    def _tick(self) -> bool:
        """False if the worker must stop."""
        deaths = self._threads_watch.deaths()
        if deaths:
            # Never half-alive: without its committer, parking lot, watchdog or liveness
            # keeper the worker would take messages it can never finish.
            log.critical(
                "internal thread %s died; stopping the worker (exit %d)",
                ", ".join(name for name, _ in deaths),
                EXIT_ERROR,
            )
            return False
        if not self.store_gate.ok:
            self._try_resume()
        return True

    def _shutdown(self, grace: float | None) -> int:
        grace = self.cfg.shutdown_grace_s if grace is None else grace
        self._stopping = True
        self.conn.call(lambda: self.conn.set_consuming(on=False))
        self.hooks.stopping(self)
        for delivery in self.threads.take_queued():
            self._hand_back(delivery)
        for delivery in self.parking.drain():
            self._hand_back(delivery)
        for delivery in self.store_gate.take_waiting():
            self._hand_back(delivery)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self._inflight == 0:
                break
            time.sleep(0.05)
        unfinished = self._inflight
        if unfinished:
            # Async agents still waiting are cancelled (their cleanup runs) and their requests
            # go no further: unacked, they return to the queue, and their claims make the next
            # worker answer them EXECUTION_IN_DOUBT, from a record.
            cancelled = self.runtime.aio.shutdown()
            if cancelled:
                log.warning("cancelled %d async agents still running at the grace", cancelled)
        self.parking.stop()
        self.threads.stop()
        self.conn.stop()
        self.http.stop()
        code = self._close(unfinished, grace)
        self.hooks.stopped(self, code)
        return code

    def _close(self, unfinished: int, grace: float) -> int:
        if self._threads_watch.deaths():
            if unfinished:
                log.error("%d deliveries unfinished; they return to the queue", unfinished)
            else:
                self.runtime.close()
            return EXIT_ERROR
        if unfinished:
            log.error(
                "grace period of %.0f s expired with %d deliveries unfinished; they return to the queue",
                grace,
                unfinished,
            )
            return EXIT_GRACE_EXPIRED
        self.runtime.close()
        log.info("worker %s stopped cleanly", self.cfg.worker_id)
        return EXIT_OK

    # -- I/O thread callbacks ------------------------------------------------------------
    def _on_delivery(self, delivery: Delivery) -> None:
        self.hooks.received(delivery)
        with self._inflight_lock:
            self._inflight += 1
        self.threads.put(delivery)

    def _on_consuming(self, *, consuming: bool) -> None:
        # Deliveries of a lost channel are dropped by their generation in _pipeline_loop.
        self.hooks.consuming(consuming)

    def _on_cancel(self) -> None:
        self.hooks.consumer_cancelled()

    def _on_reconnect(self) -> None:
        self.hooks.reconnected()
        for stale in self.parking.drop_stale(self.conn.generation):
            # Redelivered on the new channel; nothing to settle on the old one.
            self._done(stale, "dropped")
        if not self.store_gate.ok or self._stopping:
            self.conn.set_consuming(on=False)

    def _done(self, delivery: Delivery, how: str) -> None:
        """A delivery is finished with (settled, handed back or dropped as stale)."""
        self.hooks.settled(delivery, how)
        with self._inflight_lock:
            self._inflight -= 1

    # -- routing threads -----------------------------------------------------------------
    def _take(self, delivery: Delivery) -> None:
        """(routing thread) One delivery, unless it is stale, the worker stops or the store
        is paused. Raises `Abandoned` if its handler overstayed."""
        if delivery.generation != self.conn.generation:
            self._done(delivery, "dropped")  # its channel is gone; the broker redelivers it
            return
        if self._stopping:
            self._hand_back(delivery)
            return
        if not self.store_gate.ok and self.store_gate.wait(delivery):
            return
        try:
            self._handle(delivery)
        except Abandoned:
            raise
        except Exception:
            self._internal_error(delivery)

    def _internal_error(self, delivery: Delivery) -> None:
        # A bug of ours, not bad input. On a quorum queue the delivery goes back and the
        # delivery limit dead-letters it if the bug persists; a classic queue has no such
        # limit, so there it is dead-lettered at once rather than looped forever.
        requeue = self.cfg.queue_type == "quorum"
        log.exception(
            "internal error while handling a delivery; %s",
            "returning it to the queue" if requeue else "dead-lettering it",
        )
        self._io(
            delivery,
            lambda d=delivery, r=requeue: self.conn.nack(d.generation, d.tag, requeue=r),
            how="requeue" if requeue else "reject",
        )

    def _hand_back(self, delivery: Delivery) -> None:
        self._io(
            delivery,
            lambda: self.conn.nack(delivery.generation, delivery.tag, requeue=True),
            how="requeue",
        )

    def _io(self, delivery: Delivery, fn: Any, *, how: str) -> None:
        """Run fn on the I/O thread, then count the delivery as finished."""

        def run() -> None:
            try:
                fn()
            finally:
                self._done(delivery, how)

        if not self.conn.call(run):
            self._done(delivery, "dropped")

    def _handle(self, delivery: Delivery) -> None:
        self.hooks.handling(delivery)
        try:
            self._route(delivery)
        except BaseException as exc:
            self.hooks.handled(delivery, exc)
            raise
        self.hooks.handled(delivery, None)

    def _route(self, delivery: Delivery) -> None:
        def decided(outcome: Outcome) -> None:
            try:
                self._decided(delivery, redecide(outcome, delivery, self.cfg.reply_queue))
            except Exception:
                # Its claim must not stay marked as worked on (a redelivery would wait for
                # it forever): released if no agent ran, else kept, so it is in doubt.
                self.runtime.finish(outcome, recorded=False)
                self._internal_error(delivery)

        try:
            self.runtime.process_inline(
                delivery.body,
                context_of(delivery),
                content_type=delivery.content_type,
                correlation_id=delivery.correlation_id,
                deliver=decided,
            )
        except RecordStoreError as exc:
            # The claim could not be taken: nothing ran. Keep the delivery (no requeue, so no
            # delivery attempt is spent) and pause until the store works again.
            self.hooks.claim_failed(delivery, exc)
            log.error("cannot claim a delivery: %s; pausing until the store is usable", exc)
            self.store_gate.claim_failed(delivery)

    def _decided(self, delivery: Delivery, decision: Decision) -> None:
        """Park, or record then reply (on the routing thread, or on the one carrying a timed
        out request on)."""
        outcome = decision.outcome
        if outcome.parked:
            self.parking.park(delivery, outcome)
            return
        self.hooks.decided(delivery, decision)
        extra = {"request_id": outcome.request_id, "trace_id": outcome.trace_id}
        if outcome.kind == "rejected":
            log.warning("rejected message: %s", decision.dead_letter_reason, extra=extra)
        elif outcome.kind in ("conflict", "in_doubt"):
            log.warning("duplicate delivery answered with %s", outcome.error_code, extra=extra)
        if decision.record is None:
            self.runtime.finish(outcome, recorded=False)
            self.responder.respond(delivery, decision)
            return
        self._write(delivery, decision)

    def _write(
        self,
        delivery: Delivery,
        decision: Decision,
        stored: Callable[[bool], None] | None = None,
    ) -> None:
        """Record, then respond; `stored(False)` if the record could not be written (held)."""
        started = time.monotonic()
        outcome = decision.outcome
        assert outcome.record is not None

        def recorded(exc: BaseException | None) -> None:
            self.hooks.recorded(delivery, decision, exc, time.monotonic() - started)
            if exc is None or isinstance(exc, RecordExists):
                again = self.runtime.settle_write(outcome, exc)
                if exc is None:
                    self.responder.respond(delivery, decision)
                elif again is None:
                    # Fenced, and the worker that took the request over has not recorded it
                    # yet. Our result is not the record, so it is not replied: the delivery
                    # goes back and is answered from that worker's record when it exists.
                    self._hand_back(delivery)
                else:
                    replay = redecide(again, delivery, self.cfg.reply_queue)
                    self.hooks.replayed(delivery, replay)
                    self.responder.respond(delivery, replay)
            elif isinstance(exc, RecordUnstorable):
                self._unstorable(delivery, decision, str(exc))
            else:
                log.error(
                    "cannot write record %s: %s; pausing until the execution store is writable",
                    outcome.execution_id,
                    exc,
                    extra={"request_id": outcome.request_id, "trace_id": outcome.trace_id},
                )
                self.store_gate.hold(delivery, decision)
            if stored is not None:
                stored(exc is None or isinstance(exc, (RecordExists, RecordUnstorable)))

        self.hooks.recording(delivery, decision)
        self.runtime.store.put_async(outcome.execution_id, outcome.record, recorded)

    def _unstorable(self, delivery: Delivery, decision: Decision, why: str) -> None:
        """Its record is its own fault, not the store's: fail this message alone."""
        self.runtime.finish(decision.outcome, recorded=False)
        self.responder.respond(delivery, unstorable(decision, why))

    def _unpark(self, delivery: Delivery) -> None:
        """(parking thread) Its owner recorded it or died: process it again."""
        if delivery.generation != self.conn.generation:
            self._done(delivery, "dropped")  # its channel is gone; the broker redelivers it
            return
        self.threads.put(delivery)

    def _request_pause(self) -> None:
        """Stop taking new deliveries while the store fails."""
        self.conn.call(lambda: self.conn.set_consuming(on=False))

    def _try_resume(self) -> None:
        waiting = self.store_gate.try_resume(self._write, self.runtime.store.check_writable)
        if waiting is None:
            return
        for delivery in waiting:
            self.threads.put(delivery)
        if not self._stopping:
            self.conn.call(lambda: self.conn.set_consuming(on=True))
