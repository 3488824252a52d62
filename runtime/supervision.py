"""Long-lived internal threads that cannot die unnoticed.

The parking lot, the record committer, the agent watchdog and the PostgreSQL liveness keeper
each run one loop for the life of the process. If one of them met an unexpected error, the
process would go on half-alive: consuming, ready, and never recording, answering parked
duplicates or timing agents out. A `Supervised` thread logs the error and reports it to every
`Watch` alive; a worker keeps a watch and stops (not ready, exit code 1) when one reports.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

log = logging.getLogger("intentus.runtime")

_watches: weakref.WeakSet[Watch] = weakref.WeakSet()
_watches_lock = threading.Lock()


class Watch:
    """The deaths of supervised threads since this watch was made: (thread name, error)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deaths: list[tuple[str, BaseException]] = []
        with _watches_lock:
            _watches.add(self)

    def deaths(self) -> list[tuple[str, BaseException]]:
        with self._lock:
            return list(self._deaths)

    def _report(self, name: str, exc: BaseException) -> None:
        with self._lock:
            self._deaths.append((name, exc))


class Supervised(threading.Thread):
    """A daemon thread whose death by an error is logged and reported to every watch."""

    def __init__(self, target: Callable[[], Any], *, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._loop = target

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            log.critical("internal thread %s died: %r", self.name, exc, exc_info=True)
            with _watches_lock:
                watches = list(_watches)
            for watch in watches:
                watch._report(self.name, exc)
