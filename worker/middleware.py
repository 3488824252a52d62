"""Worker middlewares: one chain of hooks around each delivery and the worker's lifecycle.

A `WorkerMiddleware` has a no-op method for every hook; subclass it and override the ones you
need. It is also a runtime `Middleware` (`before_route`, `after_route`) and a runtime
`Observer` (agent attempts, cancellations, loop stalls, ...), so one object sees a request
from the broker to its settlement. Prometheus metrics and OpenTelemetry tracing are two
middlewares of this chain; the application's come after them.

Order: hooks that open something (`started`, `received`, `handling`, `decided`, `recording`,
`replying` and the runtime's reports) run first to last; hooks that close something
(`handled`, `recorded`, `published`, `replied`, `settled`, `stopping`, `stopped`) run last to
first, so the first middleware wraps all the others. A hook that raises is logged and counted
(`intentus_middleware_errors_total{hook}`); the message goes on as if it had not been there.

Hooks run on the worker's threads (the broker I/O thread for `received`, `published`,
`replied` and `settled`): they must not block. What a middleware keeps about one delivery
goes in `delivery.state[self]`, which lives as long as the delivery does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from runtime.middleware import Middleware
from runtime.observer import Observer

if TYPE_CHECKING:
    from worker.pipeline import Decision, Delivery
    from worker.service import Worker

log = logging.getLogger("intentus.worker.middleware")


class WorkerMiddleware(Middleware, Observer):
    """Base class with no-op hooks; subclass and override what you need."""

    # -- lifecycle -----------------------------------------------------------------------
    def started(self, worker: Worker) -> None:
        """The worker is about to consume (its threads and HTTP server are up)."""

    def stopping(self, worker: Worker) -> None:
        """The worker stopped consuming and is finishing its in-flight deliveries."""

    def stopped(self, worker: Worker, exit_code: int) -> None:
        """The worker has stopped; `exit_code` is what `stop()` returns."""

    # -- one delivery --------------------------------------------------------------------
    def received(self, delivery: Delivery) -> None:
        """(I/O thread) A delivery arrived; it waits for a routing thread."""

    def handling(self, delivery: Delivery) -> None:
        """(routing thread) The delivery is about to be routed, on this thread."""

    def handled(self, delivery: Delivery, error: BaseException | None) -> None:
        """(routing thread) Routing returned (`error`: what it raised); the record and reply
        may still be under way."""

    def decided(self, delivery: Delivery, decision: Decision) -> None:
        """What the delivery gets is known: its outcome, record, reply and dead letter."""

    def recording(self, delivery: Delivery, decision: Decision) -> None:
        """Its execution record is being written."""

    def recorded(
        self, delivery: Delivery, decision: Decision, error: BaseException | None, seconds: float
    ) -> None:
        """The record write ended: durable (`error` None), or failed with `error`."""

    def claim_failed(self, delivery: Delivery, error: BaseException) -> None:
        """The store could not take the request's claim; nothing ran, the worker pauses."""

    def replayed(self, delivery: Delivery, decision: Decision) -> None:
        """Another worker recorded the request first: its record is the answer."""

    def reply_too_large(self, delivery: Delivery, decision: Decision) -> None:
        """The reply was over the size limit; RESPONSE_TOO_LARGE goes instead."""

    def replying(self, delivery: Delivery, decision: Decision) -> None:
        """(I/O thread) The reply and dead letter are about to be published."""

    def published(self, delivery: Delivery, what: str, result: str) -> None:
        """(I/O thread) The broker answered one publish (`what`: `reply` or `dead_letter`;
        `result`: `confirmed`, `unroutable` or `failed`)."""

    def replied(self, delivery: Delivery, decision: Decision, result: str) -> None:
        """(I/O thread) Publishing ended: `confirmed`, the first failure, `not sent`, or
        `skipped` (nothing to publish)."""

    def settled(self, delivery: Delivery, how: str) -> None:
        """The delivery is finished with: `ack`, `requeue`, `reject` (dead-lettered by the
        broker) or `dropped` (its channel is gone; the broker redelivers it)."""

    # -- the transport -------------------------------------------------------------------
    def consuming(self, on: bool) -> None:
        """(I/O thread) Consuming started or stopped (pause, broker lost, shutdown)."""

    def reconnected(self) -> None:
        """(I/O thread) The connection to the broker was made again after a loss."""

    def consumer_cancelled(self) -> None:
        """(I/O thread) The broker cancelled the consumer; the queue is declared again."""


_FIRST_TO_LAST = (
    "started",
    "received",
    "handling",
    "decided",
    "recording",
    "claim_failed",
    "replayed",
    "reply_too_large",
    "replying",
    "consuming",
    "reconnected",
    "consumer_cancelled",
    "attempt_started",
    "attempt_finished",
    "attempt_cancelled",
    "loop_stalled",
    "fallback",
    "policy_filtered",
    "routed",
)
_LAST_TO_FIRST = (
    "handled",
    "recorded",
    "published",
    "replied",
    "settled",
    "stopping",
    "stopped",
)
HOOKS = _FIRST_TO_LAST + _LAST_TO_FIRST + ("middleware_error",)


def _overrides(mw: object, hook: str) -> bool:
    mine = getattr(type(mw), hook, None)
    return mine is not None and mine is not getattr(WorkerMiddleware, hook)


def route_middleware(chain: Sequence[object]) -> list[Middleware]:
    """The members of the chain the runtime calls around routing."""
    return [
        mw
        for mw in chain
        if isinstance(mw, Middleware)
        and (
            not isinstance(mw, WorkerMiddleware)
            or _overrides(mw, "before_route")
            or _overrides(mw, "after_route")
        )
    ]


class Chain(WorkerMiddleware):
    """The worker's middlewares as one: each hook goes to the members that override it, in
    the hook's order, each call guarded. Also the runtime's observer."""

    def __init__(self, middlewares: Sequence[object]) -> None:
        self.middlewares = tuple(mw for mw in middlewares if isinstance(mw, WorkerMiddleware))
        # Per hook, the bound methods of the members that override it, in the hook's order:
        # a hook nobody overrides costs one dictionary lookup.
        self._members: dict[str, tuple[tuple[str, Callable[..., None]], ...]] = {}
        for hook in HOOKS:
            members = tuple(
                (type(mw).__name__, getattr(mw, hook))
                for mw in self.middlewares
                if _overrides(mw, hook)
            )
            self._members[hook] = members[::-1] if hook in _LAST_TO_FIRST else members

    def _call(self, hook: str, *args: Any, **kwargs: Any) -> None:
        for name, method in self._members[hook]:
            try:
                method(*args, **kwargs)
            except Exception:
                log.exception("middleware %s.%s failed; the message goes on", name, hook)
                self.middleware_error(name, hook)

    def middleware_error(self, middleware: str, hook: str) -> None:
        for name, method in self._members["middleware_error"]:
            try:
                method(middleware, hook)
            except Exception:  # not counted again: that could go on forever
                log.exception("middleware %s.middleware_error failed", name)

    def started(self, worker: Worker) -> None:
        self._call("started", worker)

    def stopping(self, worker: Worker) -> None:
        self._call("stopping", worker)

    def stopped(self, worker: Worker, exit_code: int) -> None:
        self._call("stopped", worker, exit_code)

    def received(self, delivery: Delivery) -> None:
        self._call("received", delivery)

    def handling(self, delivery: Delivery) -> None:
        self._call("handling", delivery)

    def handled(self, delivery: Delivery, error: BaseException | None) -> None:
        self._call("handled", delivery, error)

    def decided(self, delivery: Delivery, decision: Decision) -> None:
        self._call("decided", delivery, decision)

    def recording(self, delivery: Delivery, decision: Decision) -> None:
        self._call("recording", delivery, decision)

    def recorded(
        self, delivery: Delivery, decision: Decision, error: BaseException | None, seconds: float
    ) -> None:
        self._call("recorded", delivery, decision, error, seconds)

    def claim_failed(self, delivery: Delivery, error: BaseException) -> None:
        self._call("claim_failed", delivery, error)

    def replayed(self, delivery: Delivery, decision: Decision) -> None:
        self._call("replayed", delivery, decision)

    def reply_too_large(self, delivery: Delivery, decision: Decision) -> None:
        self._call("reply_too_large", delivery, decision)

    def replying(self, delivery: Delivery, decision: Decision) -> None:
        self._call("replying", delivery, decision)

    def published(self, delivery: Delivery, what: str, result: str) -> None:
        self._call("published", delivery, what, result)

    def replied(self, delivery: Delivery, decision: Decision, result: str) -> None:
        self._call("replied", delivery, decision, result)

    def settled(self, delivery: Delivery, how: str) -> None:
        self._call("settled", delivery, how)

    def consuming(self, on: bool) -> None:
        self._call("consuming", on)

    def reconnected(self) -> None:
        self._call("reconnected")

    def consumer_cancelled(self) -> None:
        self._call("consumer_cancelled")

    # -- the runtime's observer ----------------------------------------------------------
    def attempt_started(self, agent: str, attempt: int) -> None:
        self._call("attempt_started", agent, attempt)

    def attempt_finished(
        self, agent: str, *, status: str, error_code: str | None, seconds: float
    ) -> None:
        self._call("attempt_finished", agent, status=status, error_code=error_code, seconds=seconds)

    def attempt_cancelled(self, agent: str) -> None:
        self._call("attempt_cancelled", agent)

    def loop_stalled(self, seconds: float) -> None:
        self._call("loop_stalled", seconds)

    def fallback(self, intent: str) -> None:
        self._call("fallback", intent)

    def policy_filtered(self, agent: str, rule: str) -> None:
        self._call("policy_filtered", agent, rule)

    def routed(
        self, intent: str, strategy: str, *, status: str, error_code: str | None, seconds: float
    ) -> None:
        self._call(
            "routed", intent, strategy, status=status, error_code=error_code, seconds=seconds
        )
