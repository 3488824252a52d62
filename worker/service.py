"""The worker's lifecycle: start in order, run the per-message pipeline, stop in order.

Threads: the AMQP I/O thread (owns pika), INTENTUS_CONCURRENCY pipeline threads (route one
delivery each), the runtime's agent threads and record committer, and the HTTP thread. Order
per message: route → record durable → reply confirmed → ack. Shutdown: stop consuming, hand
back deliveries not yet started, finish the rest within the grace period, close.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from runtime.claims import new_owner_token
from runtime.engine import IntentusRuntime
from runtime.errors import IntentusError, RecordExists, RecordStoreError
from runtime.middleware import Middleware
from runtime.policy import Policy
from runtime.registry import AgentRegistry
from runtime.store import RecordStore
from worker import tracing
from worker.amqp import ConsumerConnection
from worker.config import Config, describe, mask_url, option_error
from worker.errors import (
    EXIT_GRACE_EXPIRED,
    EXIT_OK,
    EXIT_SECOND_SIGNAL,
    RecordsUnusable,
)
from worker.health import HealthServer
from worker.metrics import Metrics
from worker.parking import ParkingLot
from worker.pipeline import Decision, Delivery, decide, redecide
from worker.transport import Listeners, Transport

log = logging.getLogger("intentus.worker")

_TICK_S = 0.5
_RESUME_WRITE_WAIT_S = 5.0
MEMORY_RECORDS = ":memory:"


def open_postgres_store(cfg: Config) -> RecordStore:
    """The PostgreSQL execution store for this worker (the `postgres` extra)."""
    from runtime.pgstore import PostgresRecordStore

    return PostgresRecordStore(
        cfg.records_url,
        owner=new_owner_token(cfg.worker_id),
        pool_size=cfg.concurrency + 2,
    )


class Worker:
    """One worker process. `run()` blocks until stopped and returns the exit code."""

    def __init__(
        self,
        cfg: Config,
        registry: AgentRegistry,
        policy: Policy | None = None,
        middleware: Sequence[Middleware] = (),
        *,
        handle_signals: bool = True,
        transport: Transport | None = None,
    ) -> None:
        self.cfg = cfg
        self.registry = registry
        self.metrics = Metrics(registry, {r.id for r in policy.document.rules} if policy else None)
        self.handle_signals = handle_signals
        self._received = self.metrics.messages_received.labels(cfg.queue)
        # ":memory:" keeps records in process memory: for benchmarks only (nothing is durable).
        records_dir = None if cfg.records_dir == MEMORY_RECORDS else cfg.records_dir
        option = "records_url" if cfg.records_url else "records_dir"
        where = mask_url(cfg.records_url) if cfg.records_url else cfg.records_dir
        try:
            store = None
            if cfg.records_url:
                store = open_postgres_store(cfg)
            elif records_dir is not None:
                os.makedirs(records_dir, mode=0o750, exist_ok=True)
            self.runtime = IntentusRuntime(
                registry,
                store=store,
                records_dir=records_dir,
                policy=policy,
                middleware=middleware,
                agent_timeout_s=cfg.agent_timeout_s,
                max_message_bytes=cfg.max_message_bytes,
                worker_id=cfg.worker_id,
                observer=tracing.observer(self.metrics),
            )
            self.runtime.store.check_writable()
        except (OSError, RecordStoreError) as exc:
            why = f"{where!r} is not usable: {exc}"
            raise RecordsUnusable(str(option_error(option, why))) from None
        except IntentusError as exc:
            raise RecordsUnusable(str(option_error(option, f"{where!r}: {exc}"))) from None
        self._jobs: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self._stop = threading.Event()
        self._stopping = False
        self._signals = 0
        self._store_ok = True
        self._held: list[tuple[Delivery, Decision]] = []
        # Deliveries taken while the store fails: kept (not requeued, which would spend a
        # delivery attempt each time) until it works again.
        self._waiting: list[Delivery] = []
        self._held_lock = threading.Lock()
        self.parking = ParkingLot(self.runtime, self._unpark)
        self._threads: list[threading.Thread] = []
        self.conn: Transport = transport if transport is not None else ConsumerConnection(cfg)
        self.conn.bind(
            Listeners(
                on_delivery=self._on_delivery,
                on_state=self._on_consuming,
                on_reconnect=self._on_reconnect,
                on_cancel=self._on_cancel,
            )
        )
        host, port = cfg.metrics_host_port
        self.http = HealthServer(host, port, self.metrics.registry, self.readiness)

    # -- readiness -----------------------------------------------------------------------
    def readiness(self) -> tuple[bool, list[str]]:
        reasons = []
        if self._stopping:
            reasons.append("shutting down")
        if not self.conn.consuming and not self._stopping:
            reasons.append("not consuming (broker disconnected or paused)")
        if self.conn.cancelled:
            reasons.append("consumer cancelled by the broker; declaring the queue again")
        if not self._store_ok:
            reasons.append("execution store not writable")
        abandoned = self.runtime.invoker.abandoned()
        if abandoned >= self.cfg.concurrency:
            reasons.append(f"{abandoned} agent threads stuck past their deadline")
        ready = not reasons
        self.metrics.ready.set(1 if ready else 0)
        return ready, reasons

    # -- lifecycle -----------------------------------------------------------------------
    def run(self) -> int:
        self.conn.declare()
        log.info("starting worker %s", self.cfg.worker_id, extra={"config": describe(self.cfg)})
        if self.handle_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self.http.start()
        self.parking.start()
        for i in range(self.cfg.concurrency):
            t = threading.Thread(
                target=self._pipeline_loop, name=f"intentus-pipeline-{i}", daemon=True
            )
            t.start()
            self._threads.append(t)
        self.conn.start()
        log.info(
            "worker %s consuming %s with %d agents; metrics on http://%s/metrics",
            self.cfg.worker_id,
            self.cfg.queue,
            len(self.registry),
            self.cfg.metrics_addr,
        )
        while not self._stop.wait(_TICK_S):
            self._tick()
        return self._shutdown()

    def request_stop(self) -> None:
        self._stop.set()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals += 1
        if self._signals > 1:
            os.write(2, b"second signal: exiting now\n")
            os._exit(EXIT_SECOND_SIGNAL)
        log.info(
            "received %s: finishing in-flight work (grace %.0f s)",
            signal.Signals(signum).name,
            self.cfg.shutdown_grace_s,
        )
        self._stop.set()

    def _tick(self) -> None:
        self.metrics.abandoned.set(self.runtime.invoker.abandoned())
        self.metrics.inflight.set(self._inflight)
        if not self._store_ok:
            self._try_resume()
        self.readiness()

    def _shutdown(self) -> int:
        self._stopping = True
        self.conn.call(lambda: self.conn.set_consuming(False))
        self._hand_back_queued()
        for delivery in self.parking.drain():
            self._hand_back(delivery)
        with self._held_lock:
            waiting, self._waiting = self._waiting, []
        for delivery in waiting:
            self._hand_back(delivery)
        deadline = time.monotonic() + self.cfg.shutdown_grace_s
        while time.monotonic() < deadline:
            if self._inflight == 0:
                break
            time.sleep(0.05)
        unfinished = self._inflight
        self.parking.stop()
        for _ in self._threads:
            self._jobs.put(None)
        self.conn.stop()
        self.http.stop()
        if unfinished:
            log.error(
                "grace period of %.0f s expired with %d deliveries unfinished; they return to the queue",
                self.cfg.shutdown_grace_s,
                unfinished,
            )
            return EXIT_GRACE_EXPIRED
        self.runtime.close()
        log.info("worker %s stopped cleanly", self.cfg.worker_id)
        return EXIT_OK

    # -- I/O thread callbacks ------------------------------------------------------------
    def _on_delivery(self, delivery: Delivery) -> None:
        self._received.inc()
        with self._inflight_lock:
            self._inflight += 1
        self._jobs.put(delivery)

    def _on_consuming(self, on: bool) -> None:
        # Deliveries of a lost channel are dropped by their generation in _pipeline_loop.
        self.metrics.broker_connected.set(1 if on else 0)

    def _on_cancel(self) -> None:
        self.metrics.consumer_cancels.inc()

    def _on_reconnect(self) -> None:
        self.metrics.broker_reconnects.inc()
        for _stale in self.parking.drop_stale(self.conn.generation):
            self._done()  # redelivered on the new channel; nothing to settle on the old one
        if not self._store_ok or self._stopping:
            self.conn.set_consuming(False)

    def _done(self) -> None:
        with self._inflight_lock:
            self._inflight -= 1

    # -- pipeline threads ----------------------------------------------------------------
    def _pipeline_loop(self) -> None:
        while True:
            delivery = self._jobs.get()
            if delivery is None:
                return
            if delivery.generation != self.conn.generation:
                self._done()  # its channel is gone; the broker redelivers it
                continue
            if self._stopping:
                self._hand_back(delivery)
                continue
            if not self._store_ok and self._wait_for_store(delivery):
                continue
            try:
                with tracing.receive(delivery, self.cfg.queue):
                    self._handle(delivery)
            except Exception:
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
                )

    def _hand_back_queued(self) -> None:
        """Return every delivery that no pipeline thread has started (shutdown, pause)."""
        while True:
            try:
                delivery = self._jobs.get_nowait()
            except queue.Empty:
                return
            if delivery is None:  # pragma: no cover - only queued by _shutdown itself
                continue
            self._hand_back(delivery)

    def _hand_back(self, delivery: Delivery) -> None:
        self._io(delivery, lambda: self.conn.nack(delivery.generation, delivery.tag, requeue=True))

    def _io(self, delivery: Delivery, fn: Any) -> None:
        """Run fn on the I/O thread, then count the delivery as finished."""

        def run() -> None:
            try:
                fn()
            finally:
                self._done()

        if not self.conn.call(run):
            self._done()

    def _handle(self, delivery: Delivery) -> None:
        try:
            decision = decide(self.runtime, delivery, self.cfg.reply_queue)
        except RecordStoreError as exc:
            # The claim could not be taken: nothing ran. Keep the delivery (no requeue, so no
            # delivery attempt is spent) and pause until the store works again.
            self.metrics.record_write_errors.inc()
            log.error("cannot claim a delivery: %s; pausing until the store is usable", exc)
            with self._held_lock:
                self._waiting.append(delivery)
                first = self._store_ok
                self._store_ok = False
            if first:
                self.conn.call(lambda: self.conn.set_consuming(False))
            return
        outcome = decision.outcome
        if outcome.parked:
            self.parking.park(delivery, outcome)
            return
        self._count(decision)
        extra = {"request_id": outcome.request_id, "trace_id": outcome.trace_id}
        if outcome.kind == "rejected":
            log.warning("rejected message: %s", decision.dead_letter_reason, extra=extra)
        elif outcome.kind in ("conflict", "in_doubt"):
            log.warning("duplicate delivery answered with %s", outcome.error_code, extra=extra)
        if decision.record is None:
            self.runtime.finish(outcome, recorded=False)
            self._respond(delivery, decision)
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
            tracing.end(record_span, exc)
            if exc is None:
                self.metrics.records_written.inc()
                self.metrics.record_write.observe(time.monotonic() - started)
                self.runtime.finish(outcome, recorded=True)
                self._respond(delivery, decision)
            elif isinstance(exc, RecordExists):
                self.runtime.finish(outcome, recorded=False)
                again = self.runtime.after_lost_race(outcome)
                self.metrics.duplicates.labels("replayed").inc()
                self._respond(delivery, redecide(again, delivery, self.cfg.reply_queue))
            else:
                self.metrics.record_write_errors.inc()
                log.error(
                    "cannot write record %s: %s; pausing until the execution store is writable",
                    outcome.execution_id,
                    exc,
                    extra={"request_id": outcome.request_id, "trace_id": outcome.trace_id},
                )
                self._hold(delivery, decision)
            if stored is not None:
                stored(exc is None or isinstance(exc, RecordExists))

        record_span = tracing.record(delivery, outcome)
        self.runtime.store.put_async(outcome.execution_id, outcome.record, recorded)

    def _count(self, decision: Decision) -> None:
        o = decision.outcome
        m = self.metrics
        m.intents.labels(m.intent_label(o.intent), o.status, o.error_code or "").inc()
        if o.kind in ("replayed", "conflict", "denied", "in_doubt"):
            m.duplicates.labels(o.kind).inc()
        elif o.kind == "rejected":
            m.rejected.labels(o.error_code or "unknown").inc()

    # -- store unwritable: hold, pause, resume -------------------------------------------
    def _unpark(self, delivery: Delivery) -> None:
        """(parking thread) Its owner recorded it or died: process it again."""
        if delivery.generation != self.conn.generation:
            self._done()  # its channel is gone; the broker redelivers it
            return
        self._jobs.put(delivery)

    def _hold(self, delivery: Delivery, decision: Decision) -> None:
        with self._held_lock:
            self._held.append((delivery, decision))
            first = self._store_ok
            self._store_ok = False
        if first:
            self.conn.call(lambda: self.conn.set_consuming(False))

    def _wait_for_store(self, delivery: Delivery) -> bool:
        """Keep a delivery aside while the store fails; False if it works again meanwhile."""
        with self._held_lock:
            if self._store_ok:
                return False
            self._waiting.append(delivery)
            return True

    def _try_resume(self) -> None:
        """Write the held records through the store's own write path, the first one being the
        probe; only once all are durable is the store OK and new work taken."""
        with self._held_lock:
            held, self._held = self._held, []
        if not held:
            # Nothing held to prove it with (a claim failed): the store's own probe must pass.
            try:
                self.runtime.store.check_writable()
            except RecordStoreError:
                return
        for i, (delivery, decision) in enumerate(held):
            outcome: list[bool] = []
            finished = threading.Event()

            def stored(ok: bool, box: list[bool] = outcome, ev: threading.Event = finished) -> None:
                box.append(ok)
                ev.set()

            self._write(delivery, decision, stored)
            # A write still running after the wait settles itself: it responds, or holds again.
            if not finished.wait(_RESUME_WRITE_WAIT_S) or not outcome[0]:
                with self._held_lock:
                    self._held.extend(held[i + 1 :])
                return
        with self._held_lock:
            if self._held:
                return  # a write in flight when the store failed is held now; try again later
            self._store_ok = True
            waiting, self._waiting = self._waiting, []
        log.info(
            "records writable again: %d held records written; resuming with %d waiting deliveries",
            len(held),
            len(waiting),
        )
        for delivery in waiting:
            self._jobs.put(delivery)
        if not self._stopping:
            self.conn.call(lambda: self.conn.set_consuming(True))

    # -- replying (I/O thread) -----------------------------------------------------------
    def _respond(self, delivery: Delivery, decision: Decision) -> None:
        if not self.conn.call(lambda: self._io_respond(delivery, decision)):
            self._done()

    def _io_respond(self, delivery: Delivery, decision: Decision) -> None:
        conn = self.conn
        if delivery.generation != conn.generation:
            # The channel it came on is gone: the broker redelivers it and the redelivery is
            # answered from the record. Acking it here would ack a stranger's tag.
            self._done()
            return
        outcome = decision.outcome
        parts = (1 if decision.dead_letter_reason else 0) + (1 if decision.reply else 0)
        state = {"left": parts, "failed": False}

        def confirmed(which: str, result: str) -> None:
            if which == "reply":
                self.metrics.replies.labels(result).inc()
            if result == "failed":
                state["failed"] = True
            state["left"] -= 1
            if state["left"] == 0:
                tracing.end(reply_span, "failed" if state["failed"] else result)
                if state["failed"]:
                    conn.nack(delivery.generation, delivery.tag, requeue=True)
                else:
                    conn.ack(delivery.generation, delivery.tag)
                self._done()

        if parts == 0:
            self.metrics.replies.labels("skipped").inc()
            conn.ack(delivery.generation, delivery.tag)
            self._done()
            return
        reply_span = tracing.reply(delivery, decision)
        sent = True
        if decision.dead_letter_reason:
            sent = conn.publish_dead_letter(
                delivery,
                reason=decision.dead_letter_reason,
                execution_id=outcome.execution_id,
                done=lambda result: confirmed("dlq", result),
            )
        if sent and decision.reply is not None:
            sent = conn.publish_reply(decision.reply, lambda result: confirmed("reply", result))
        if not sent:
            tracing.end(reply_span, "not sent")
            self._done()
