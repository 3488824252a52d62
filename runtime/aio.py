"""Async agents: `async def` handlers run as tasks on an event loop, never on routing threads.

The runtime owns one loop, on its own thread (`intentus-aio`), started with the first async
attempt. A routing thread that reaches an async agent hands the attempt to the loop and goes
back to other work; when the task ends, `on_end(attempt)` is called *on the loop*, and must
only hand the rest of the request to a thread (`resume`): the loop runs agents' coroutines and
nothing else, so that one slow record write or sync agent never holds up a thousand waiting
agents.

Each attempt ends exactly once, decided under one lock: its task returned (or raised), its
deadline passed (the task is cancelled: the agent sees CancelledError and may clean up, and
the attempt ends as AGENT_TIMEOUT at once, without waiting for that cleanup), or the request
stopped waiting for it (a PARALLEL straggler, or shutdown).

An agent that calls blocking code inside `async def` stalls every agent on the loop. A watcher
thread notices a loop that has not ticked for `STALL_S`, logs which agent's task holds it and
where, and reports it (`Observer.loop_stalled`). It cannot unblock it; the worker's broker
connection has its own thread, so the worker stays connected meanwhile.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from runtime.errors import ErrorCode
from runtime.invoker import (
    Abandoned,
    AttemptResult,
    agent_failure,
    checked_result,
    expired_result,
)
from runtime.observer import Observer
from runtime.response import error_dict

log = logging.getLogger("intentus.runtime.aio")

#: How an attempt ended: its handler returned (or raised); a sync handler's thread was left
#: behind at the deadline; an async handler's task was cancelled (deadline or straggler).
Ending = Literal["returned", "abandoned", "cancelled"]

#: The loop ticks this often; the watcher looks as often.
BEAT_S = 0.1
#: A loop that has not ticked for this long is reported as blocked.
STALL_S = 0.5
# route_intent() waits this long past an async attempt's deadline for the loop to end it
# (a loop blocked by a mistaken agent fires its timers late); then it ends it itself.
_FORCE_S = 1.0
# Continuations after an async attempt, when nobody supplies threads of their own (the worker
# does: its routing threads).
_RESUME_THREADS = 32
_SHUTDOWN_WAIT_S = 2.0

_current: contextvars.ContextVar[AsyncAgents | None] = contextvars.ContextVar(
    "intentus_async_agents", default=None
)


class AsyncAttempt:
    """One async handler call. `deadline` is infinite: the loop keeps it, not the caller."""

    __slots__ = (
        "agent",
        "deadline",
        "ending",
        "envelope",
        "error",
        "handler",
        "on_end",
        "payload",
        "runner",
        "seconds",
        "started",
        "task",
        "timeout_s",
        "timer",
    )

    def __init__(
        self,
        runner: AsyncAgents,
        *,
        agent: str,
        handler: Callable[[Any], Any],
        envelope: Any,
        timeout_s: float,
        on_end: Callable[[AsyncAttempt], None],
    ) -> None:
        self.runner = runner
        self.agent = agent
        self.handler = handler
        self.envelope = envelope
        self.timeout_s = timeout_s
        self.on_end = on_end
        self.deadline = float("inf")
        self.started = runner.monotonic()
        self.seconds = 0.0
        self.payload: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.ending: Ending | Literal["shutdown"] | None = None
        self.task: asyncio.Task[Any] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def result(self) -> AttemptResult:
        if self.error is not None:
            return AttemptResult.failed(self.error, self.seconds)
        return AttemptResult.succeeded(self.payload, self.seconds)

    def detach(self) -> bool:
        """Stop waiting for it (PARALLEL): cancel its task. False if it had ended already."""
        return self.runner.cancel(self)


class AsyncAgents:
    """Runs async handlers on one event loop: the runtime's own (on a thread it starts), or
    an application's (`on_loop`), for `route_intent_async`."""

    def __init__(
        self,
        monotonic: Callable[[], float],
        observer: Observer,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        resume: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        self.monotonic = monotonic
        self.observer = observer
        self._loop = loop
        self._owned = loop is None
        self._lock = threading.Lock()
        self._live: set[AsyncAttempt] = set()
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._beat = time.monotonic()
        self._pool: ThreadPoolExecutor | None = None
        self._bound: dict[asyncio.AbstractEventLoop, AsyncAgents] = {}
        #: Runs the rest of a request after its async attempt ended, on a thread (the worker
        #: gives its own, through the runtime's constructor, to use its routing threads).
        self.resume: Callable[[Callable[[], None]], None] = resume or self._resume_on_pool

    # -- which runner ------------------------------------------------------------------
    def current(self) -> AsyncAgents:
        """The runner for this request: an application loop's if `route_intent_async` set
        one in the request's context, else this (the runtime's own)."""
        return _current.get() or self

    def on_loop(self, loop: asyncio.AbstractEventLoop) -> AsyncAgents:
        """A runner on an application's loop, sharing this one's continuation threads."""
        with self._lock:
            for old in [old for old in self._bound if old.is_closed()]:
                del self._bound[old]
            found = self._bound.get(loop)
            if found is None:
                found = self._bound[loop] = AsyncAgents(
                    self.monotonic, self.observer, loop=loop, resume=self.resume
                )
            return found

    @staticmethod
    def use(runner: AsyncAgents) -> contextvars.Token[AsyncAgents | None]:
        return _current.set(runner)

    @staticmethod
    def reset(token: contextvars.Token[AsyncAgents | None]) -> None:
        _current.reset(token)

    # -- attempts (any thread) ---------------------------------------------------------
    def start(
        self,
        agent: str,
        handler: Callable[[Any], Any],
        *,
        envelope: Any,
        timeout_s: float,
        on_end: Callable[[AsyncAttempt], None],
    ) -> AsyncAttempt:
        """Begin the handler on the loop; `on_end(attempt)` runs on the loop once it ended
        (not when it was cancelled by `cancel` or `shutdown`)."""
        attempt = AsyncAttempt(
            self,
            agent=agent,
            handler=handler,
            envelope=envelope,
            timeout_s=timeout_s,
            on_end=on_end,
        )
        with self._lock:
            self._live.add(attempt)
        self._ensure_loop().call_soon_threadsafe(self._begin, attempt)
        return attempt

    def call(
        self, agent: str, handler: Callable[[Any], Any], *, envelope: Any, timeout_s: float
    ) -> tuple[AttemptResult, Ending]:
        """Run and wait (a thread that may block: `route_intent`, PARALLEL)."""
        ended: queue.SimpleQueue[AsyncAttempt] = queue.SimpleQueue()
        attempt = self.start(
            agent, handler, envelope=envelope, timeout_s=timeout_s, on_end=ended.put
        )
        try:
            ended.get(timeout=timeout_s + _FORCE_S)
        except queue.Empty:
            # Not ended in time (a blocked loop), or ended by `shutdown`, which tells no one.
            if self.cancel(attempt) or attempt.ending == "shutdown":
                return expired_result(agent, timeout_s, self.monotonic() - attempt.started), (
                    "cancelled"
                )
            ended.get()  # it ended just now
        assert attempt.ending in ("returned", "cancelled")
        return attempt.result(), attempt.ending

    def cancel(self, attempt: AsyncAttempt) -> bool:
        """Cancel its task; False if it had ended already."""
        if not self._end(attempt, "cancelled"):
            return False
        self.observer.attempt_cancelled(attempt.agent)
        if attempt.runner._loop is not None and not attempt.runner._loop.is_closed():
            attempt.runner._loop.call_soon_threadsafe(_cancel_task, attempt)
        return True

    def inflight(self) -> int:
        """Async handlers running (cancelled ones included until their cleanup is done)."""
        with self._lock:
            return len(self._live) + sum(r.inflight() for r in self._bound.values())

    def shutdown(self, wait_s: float = _SHUTDOWN_WAIT_S) -> int:
        """Cancel every running handler without carrying its request on (its claim stays: the
        request is answered EXECUTION_IN_DOUBT by whoever takes it next), wait up to `wait_s`
        for their cleanup; returns how many were cancelled."""
        with self._lock:
            live = list(self._live)
        cancelled = 0
        for attempt in live:
            if self._end(attempt, "shutdown"):
                cancelled += 1
                self.observer.attempt_cancelled(attempt.agent)
                if self._loop is not None and not self._loop.is_closed():
                    self._loop.call_soon_threadsafe(_cancel_task, attempt)
        deadline = time.monotonic() + wait_s
        while self.inflight() and time.monotonic() < deadline:
            time.sleep(0.02)
        return cancelled

    def close(self) -> None:
        self._closed.set()
        if self._owned and self._loop is not None and self._thread is not None:
            self.shutdown(wait_s=0.5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(2.0)
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    # -- the loop ------------------------------------------------------------------------
    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._loop is None:
                if self._closed.is_set():
                    raise RuntimeError("the runtime is closed")
                loop = asyncio.new_event_loop()
                started = threading.Event()
                self._thread = threading.Thread(
                    target=self._run_loop, args=(loop, started), name="intentus-aio", daemon=True
                )
                self._thread.start()
                started.wait()
                threading.Thread(
                    target=self._watch, args=(self._thread,), name="intentus-aio-watch", daemon=True
                ).start()
                self._loop = loop
            return self._loop

    def _run_loop(self, loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(self._tick, loop)
        loop.call_soon(started.set)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._beat = time.monotonic()
        loop.call_later(BEAT_S, self._tick, loop)

    def _watch(self, thread: threading.Thread) -> None:
        """(watcher thread) Report a loop that stopped ticking, once per stall."""
        reported = 0.0
        while not self._closed.wait(BEAT_S):
            beat = self._beat
            stalled = time.monotonic() - beat
            if stalled < STALL_S or beat == reported:
                continue
            reported = beat
            loop = self._loop
            task = asyncio.current_task(loop) if loop is not None else None
            frame = sys._current_frames().get(thread.ident or 0)
            where = "".join(traceback.format_stack(frame, limit=4)) if frame else ""
            log.warning(
                "the event loop of async agents is blocked (%.1f s so far) by %s: an async "
                "agent calls blocking code; every async agent waits meanwhile\n%s",
                stalled,
                task.get_name() if task is not None else "code outside any agent",
                where,
            )
            self.observer.loop_stalled(stalled)

    def _begin(self, attempt: AsyncAttempt) -> None:
        """(loop) Start the task and its deadline."""
        if attempt.ending is not None:  # cancelled before it began
            self._forget(attempt)
            return
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._run(attempt), name=f"agent '{attempt.agent}'")
        attempt.task = task
        attempt.timer = loop.call_later(attempt.timeout_s, self._expire, attempt)
        task.add_done_callback(lambda _t: self._finished(attempt))

    async def _run(
        self, attempt: AsyncAttempt
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        try:
            return checked_result(await attempt.handler(attempt.envelope)), None
        except asyncio.CancelledError:
            if attempt.ending is not None:
                raise  # we cancelled it: deadline, straggler or shutdown
            message = f"agent '{attempt.agent}' was cancelled before its deadline"
            return None, error_dict(ErrorCode.INTERNAL_AGENT_ERROR, message, {})
        except BaseException as exc:  # nothing an agent raises may stop the loop
            return None, agent_failure(exc, attempt.envelope, attempt.agent)

    def _finished(self, attempt: AsyncAttempt) -> None:
        """(loop) The task is done: its result stands unless the attempt ended before."""
        self._forget(attempt)
        if attempt.timer is not None:
            attempt.timer.cancel()
        task = attempt.task
        assert task is not None
        if not self._end(attempt, "returned"):
            if not task.cancelled() and task.exception() is None:
                log.warning(
                    "async agent '%s' finished after its attempt ended (%s); result discarded",
                    attempt.agent,
                    attempt.ending,
                )
            return
        attempt.payload, attempt.error = task.result()
        attempt.seconds = self.monotonic() - attempt.started
        _call(attempt.on_end, attempt)

    def _expire(self, attempt: AsyncAttempt) -> None:
        """(loop) Its deadline passed: cancel it and end the attempt now."""
        if not self._end(attempt, "cancelled"):
            return
        attempt.seconds = self.monotonic() - attempt.started
        attempt.error = expired_result(attempt.agent, attempt.timeout_s, attempt.seconds).error
        self.observer.attempt_cancelled(attempt.agent)
        _cancel_task(attempt)
        _call(attempt.on_end, attempt)

    def _end(self, attempt: AsyncAttempt, ending: Any) -> bool:
        with self._lock:
            if attempt.ending is not None:
                return False
            attempt.ending = ending
            return True

    def _forget(self, attempt: AsyncAttempt) -> None:
        with self._lock:
            self._live.discard(attempt)

    def _resume_on_pool(self, fn: Callable[[], None]) -> None:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(
                        _RESUME_THREADS, thread_name_prefix="intentus-resume"
                    )
        self._pool.submit(_guarded, fn)


def _cancel_task(attempt: AsyncAttempt) -> None:
    if attempt.task is not None:
        attempt.task.cancel()
    if attempt.timer is not None:
        attempt.timer.cancel()


def _call(fn: Callable[[AsyncAttempt], None], attempt: AsyncAttempt) -> None:
    try:
        fn(attempt)
    except Exception:  # pragma: no cover - on_end only hands over to a thread
        log.exception("cannot continue after async agent '%s'", attempt.agent)


def _guarded(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Abandoned:
        pass  # a sync handler after the async one overstayed: the request went on elsewhere
    except Exception:
        log.exception("internal error while continuing a request after an async agent")
