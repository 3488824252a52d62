"""Deadlines for handlers that run inline, on the thread that routes the request.

A handler called inline costs no thread hand-off, but a stuck one cannot be interrupted. So one
watchdog thread keeps every inline attempt's deadline. At the deadline it *abandons* the
attempt: the request's continuation (a callback holding the rest of the route) goes on at once
on a new thread, with the attempt ended as AGENT_TIMEOUT, and when the stuck handler finally
returns, its thread learns that its result is discarded and leaves.

Exactly one of the two happens for each attempt, decided under one lock: the handler's thread
finishes it (`finish` returns True), or the watchdog abandons it (`finish` returns False).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from runtime.supervision import Supervised

log = logging.getLogger("intentus.runtime.watchdog")
_monotonic = time.monotonic
# Finished attempts stay in the heap (removing one from the middle costs more than the whole
# watch); once the heap has this many entries they are swept out, so that it does not grow
# with the timeout, and the next sweep waits until the heap has doubled again.
_SWEEP_AT = 4096
# The watchdog wakes no more often than this: an attempt is abandoned at most this late, and a
# stream of requests does not cost a wake-up each.
_GRANULARITY_S = 0.005


class InlineAttempt:
    """One inline handler call and what to do if its deadline passes first."""

    __slots__ = ("abandoned", "agent", "deadline", "finished", "on_timeout")

    def __init__(self, agent: str, deadline: float, on_timeout: Callable[[], None]) -> None:
        self.agent = agent
        self.deadline = deadline
        self.on_timeout = on_timeout
        self.finished = False
        self.abandoned = False


class Watchdog:
    """One thread, one heap of deadlines; started on first use."""

    def __init__(self, name: str = "intentus-watchdog") -> None:
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, InlineAttempt]] = []
        self._order = itertools.count()
        self._live = 0
        self._sweep_at = _SWEEP_AT
        self._wake_at = float("inf")  # the deadline the watchdog sleeps towards
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stuck: set[InlineAttempt] = set()

    def watch(self, agent: str, timeout_s: float, on_timeout: Callable[[], None]) -> InlineAttempt:
        attempt = InlineAttempt(agent, _monotonic() + timeout_s, on_timeout)
        with self._cond:
            heap = self._heap
            heapq.heappush(heap, (attempt.deadline, next(self._order), attempt))
            self._live += 1
            if len(heap) > self._sweep_at:
                self._heap = heap = [entry for entry in heap if not entry[2].finished]
                heapq.heapify(heap)
                self._sweep_at = max(_SWEEP_AT, 2 * len(heap))
            if self._thread is None:
                self._thread = Supervised(self._loop, name=self._name)
                self._thread.start()
            elif attempt.deadline < self._wake_at:
                self._cond.notify()  # earlier than the deadline it sleeps towards
        return attempt

    def finish(self, attempt: InlineAttempt) -> bool:
        """(handler's thread) True if the result stands; False if the attempt was abandoned."""
        with self._cond:
            if attempt.abandoned:
                self._stuck.discard(attempt)
                return False
            attempt.finished = True
            attempt.on_timeout = _nothing  # let go of the request it would have carried on
            self._live -= 1
            return True

    def stuck(self) -> int:
        """Abandoned handlers that have not returned yet."""
        with self._cond:
            return len(self._stuck)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _loop(self) -> None:
        expired: list[InlineAttempt] = []
        with self._cond:
            while not self._closed:
                now = _monotonic()
                heap = self._heap
                while heap and heap[0][0] <= now:
                    attempt = heapq.heappop(heap)[2]
                    if not attempt.finished:
                        attempt.abandoned = True
                        self._live -= 1
                        self._stuck.add(attempt)
                        expired.append(attempt)
                if expired:
                    self._cond.release()
                    try:
                        for attempt in expired:
                            _run(attempt.on_timeout)
                    finally:
                        expired.clear()
                        self._cond.acquire()
                    continue
                if not heap:
                    self._wake_at = float("inf")
                    self._cond.wait()
                    continue
                self._wake_at = max(heap[0][0], now + _GRANULARITY_S)
                self._cond.wait(self._wake_at - now)


def _nothing() -> None:
    pass


def _run(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:  # pragma: no cover - on_timeout only starts a thread
        log.exception("cannot continue a timed-out request")
