"""Runs agent handlers on pool threads so that a deadline can be enforced from outside.

A handler that overstays its deadline cannot be killed in Python; its attempt ends as
AGENT_TIMEOUT and the thread is *abandoned*: the request goes on without it, the pool starts
another thread, and `abandoned()` counts the stuck ones until they return.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from _thread import allocate_lock as _allocate_lock
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from runtime.canonical import dumps
from runtime.errors import AgentError, ErrorCode
from runtime.response import error_dict
from runtime.tracebacks import request_ids, summarise
from runtime.watchdog import Watchdog

log = logging.getLogger("intentus.runtime.invoker")

_IDLE_EXIT_S = 60.0
_monotonic = time.monotonic


class Abandoned(BaseException):
    """Raised on a thread whose inline handler returned after its deadline: the request went
    on without it, on another thread, so this one must unwind without touching it.

    A BaseException so that the `except Exception` clauses on the way up let it through."""


Status = Literal["success", "error"]


@dataclass(slots=True, kw_only=True)
class AttemptResult:
    status: Status
    payload: dict[str, Any] | None
    error: dict[str, Any] | None
    seconds: float

    @classmethod
    def succeeded(cls, payload: dict[str, Any] | None, seconds: float) -> AttemptResult:
        return cls(status="success", payload=payload, error=None, seconds=seconds)

    @classmethod
    def failed(cls, error: dict[str, Any], seconds: float) -> AttemptResult:
        return cls(status="error", payload=None, error=error, seconds=seconds)

    @property
    def error_code(self) -> str | None:
        return None if self.error is None else self.error["code"]


_decode = json.JSONDecoder().decode


def _json_copy(value: Any, what: str) -> Any:
    try:
        # Through bytes: text that is not valid UTF-8 (a lone surrogate) must fail here.
        return _decode(dumps(value).decode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} is not JSON-serialisable: {exc}") from None


def run_handler(
    handler: Callable[[Any], Any], envelope: Any, agent: str = ""
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Call one handler; every failure (any BaseException) becomes an error dict (agent
    failures are data)."""
    try:
        return checked_result(handler(envelope)), None
    except BaseException as exc:  # the one place sync agents' exceptions are caught
        # BaseException too: SystemExit, KeyboardInterrupt or GeneratorExit raised by an
        # agent's code is that agent's failure; let through, it would end the routing (or
        # pool) thread, skip the deadline's bookkeeping and release a claim whose agent ran.
        return None, agent_failure(exc, envelope, agent)


def checked_result(result: Any) -> dict[str, Any]:
    """A handler's return value as the JSON copy that is recorded; TypeError if it is none."""
    if not isinstance(result, dict):
        raise TypeError(f"agent returned {type(result).__name__}, expected a dict")
    copied: dict[str, Any] = _json_copy(result, "agent result")
    return copied


def agent_failure(exc: BaseException, envelope: Any, agent: str) -> dict[str, Any]:
    """The error dict of a handler that raised: AgentError keeps its code, anything else is
    INTERNAL_AGENT_ERROR with the exception's message."""
    if isinstance(exc, AgentError):
        try:
            details = _json_copy(exc.details, "error details")
        except TypeError:
            details = {"repr": repr(exc.details)[:1000]}
        return error_dict(exc.code, exc.message, details)
    message = str(exc) or type(exc).__name__
    log.error(
        "agent '%s' raised %s: %s",
        agent,
        type(exc).__name__,
        message,
        exc_info=exc,
        extra={"agent": agent, **request_ids(envelope)},
    )
    details = {"exception": type(exc).__name__, "traceback": summarise(exc, skip=1)}
    return error_dict(ErrorCode.INTERNAL_AGENT_ERROR, message, details)


class Attempt:
    """One handler call in flight; the caller waits on it with a deadline.

    Deadlines are real time (`time.monotonic`), whatever clock the runtime was given: a fixed
    test clock must not make a stuck handler wait forever or never count as abandoned.
    `started`/`seconds` use the runtime's clock, because they end up in records.
    """

    __slots__ = (
        "_done",
        "_invoker",
        "_notify",
        "agent",
        "deadline",
        "detached",
        "error",
        "finished",
        "payload",
        "seconds",
        "started",
        "timeout_s",
    )

    def __init__(
        self,
        invoker: AgentInvoker,
        *,
        agent: str,
        timeout_s: float,
        started: float,
        notify: queue.SimpleQueue[Attempt] | None,
    ) -> None:
        self._invoker = invoker
        self.agent = agent
        self.timeout_s = timeout_s
        self.deadline = _monotonic() + timeout_s
        self._notify = notify
        # A bare lock, held until the handler returns: the cheapest wait-with-timeout there is.
        self._done = _allocate_lock()
        self._done.acquire()
        self.started = started
        self.seconds = 0.0
        self.payload: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.finished = False
        self.detached = False

    def wait(self, timeout: float) -> bool:
        if self._done.acquire(timeout=max(0.0, timeout)):
            self._done.release()
            return True
        return False

    def result(self) -> AttemptResult:
        if self.error is not None:
            return AttemptResult.failed(self.error, self.seconds)
        return AttemptResult.succeeded(self.payload, self.seconds)

    def detach(self) -> bool:
        """The request no longer waits for this attempt (timed out, or PARALLEL straggler).

        False if the handler had already returned (its result stands)."""
        return self._invoker._detach(self)

    def _complete(self) -> None:
        self._done.release()
        if self._notify is not None:
            self._notify.put(self)


class AgentInvoker:
    """An elastic thread pool for handlers: grows when every thread is busy or stuck."""

    def __init__(
        self,
        clock_monotonic: Callable[[], float],
        name: str = "intentus-agent",
        *,
        carry_on: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        self._monotonic = clock_monotonic
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Attempt, Callable[[Any], Any], Any] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0
        self._detached: set[Attempt] = set()
        self._closed = False
        self._seq = 0
        self.watchdog = Watchdog()
        #: Starts the thread that carries a request on after an inline handler's deadline
        #: (an embedder with a pool of its own gives one that makes the thread join it after).
        self.carry_on: Callable[[Callable[[], None]], None] = carry_on or _new_thread

    def call_inline(
        self,
        agent: str,
        handler: Callable[[Any], Any],
        *,
        envelope: Any,
        timeout_s: float,
        on_timeout: Callable[[AttemptResult], None],
    ) -> AttemptResult | None:
        """Run the handler on this thread; None if it overstayed its deadline, in which case
        `on_timeout(AGENT_TIMEOUT result)` was called from the watchdog at the deadline."""
        started = self._monotonic()

        def expired() -> None:
            on_timeout(
                expired_result(agent, timeout_s, self._monotonic() - started),
            )

        watched = self.watchdog.watch(agent, timeout_s, expired)
        payload, error = run_handler(handler, envelope, agent)
        seconds = self._monotonic() - started
        if not self.watchdog.finish(watched):
            log.warning("abandoned agent '%s' returned after %.3f s", agent, seconds)
            return None
        if error is not None:
            return AttemptResult.failed(error, seconds)
        return AttemptResult.succeeded(payload, seconds)

    def start(
        self,
        agent: str,
        handler: Callable[[Any], Any],
        *,
        envelope: Any,
        timeout_s: float,
        notify: queue.SimpleQueue[Attempt] | None = None,
    ) -> Attempt:
        attempt = Attempt(
            self, agent=agent, timeout_s=timeout_s, started=self._monotonic(), notify=notify
        )
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                spawn = False
            else:
                self._threads += 1
                self._seq += 1
                spawn = True
                seq = self._seq
        self._jobs.put((attempt, handler, envelope))
        if spawn:
            threading.Thread(target=self._loop, name=f"{self._name}-{seq}", daemon=True).start()
        return attempt

    def call(
        self, agent: str, handler: Callable[[Any], Any], *, envelope: Any, timeout_s: float
    ) -> tuple[AttemptResult, bool]:
        """Run and wait; returns (result, timed_out)."""
        attempt = self.start(agent, handler, envelope=envelope, timeout_s=timeout_s)
        if attempt.wait(attempt.deadline - _monotonic()):
            return attempt.result(), False
        if not attempt.detach():  # it returned just as the deadline passed
            attempt.wait(1.0)
            return attempt.result(), False
        return self.timeout_result(attempt), True

    def timeout_result(self, attempt: Attempt) -> AttemptResult:
        return expired_result(attempt.agent, attempt.timeout_s, self._monotonic() - attempt.started)

    def abandoned(self) -> int:
        """Handlers still running past their deadline after the request moved on."""
        now = _monotonic()
        with self._lock:
            pooled = sum(1 for a in self._detached if now >= a.deadline)
        return pooled + self.watchdog.stuck()

    def threads(self) -> int:
        with self._lock:
            return self._threads

    def close(self) -> None:
        self.watchdog.close()
        with self._lock:
            self._closed = True
            idle = self._idle
        for _ in range(idle):
            self._jobs.put(None)

    def _detach(self, attempt: Attempt) -> bool:
        with self._lock:
            if attempt.finished:
                return False
            attempt.detached = True
            self._detached.add(attempt)
            return True

    def _loop(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=_IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:
                        self._idle -= 1
                        self._threads -= 1
                        return
                continue
            if job is None:
                with self._lock:
                    self._threads -= 1
                return
            attempt, handler, envelope = job
            attempt.payload, attempt.error = run_handler(handler, envelope, attempt.agent)
            attempt.seconds = self._monotonic() - attempt.started
            with self._lock:
                attempt.finished = True
                if attempt.detached:
                    self._detached.discard(attempt)
                    log.warning(
                        "abandoned agent '%s' returned after %.3f s", attempt.agent, attempt.seconds
                    )
                if self._closed:
                    self._threads -= 1
                    attempt._complete()
                    return
                self._idle += 1
            attempt._complete()


def expired_result(agent: str, timeout_s: float, elapsed: float) -> AttemptResult:
    return AttemptResult.failed(
        error_dict(
            ErrorCode.AGENT_TIMEOUT,
            f"agent '{agent}' did not answer within {timeout_s:g} s",
            {"timeout_s": round(timeout_s, 3)},
        ),
        elapsed,
    )


def _new_thread(fn: Callable[[], None]) -> None:
    threading.Thread(target=fn, name="intentus-carry-on", daemon=True).start()
