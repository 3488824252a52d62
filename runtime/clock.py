"""Time as an injected dependency, so tests and determinism checks can fix it."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Protocol


@lru_cache(maxsize=64)
def format_timestamp(moment: datetime) -> str:
    """UTC, ISO 8601, milliseconds, `Z` suffix."""
    # Cached: a request's receipt time is formatted for its envelope and again for its record.
    if moment.tzinfo is UTC:
        # isoformat truncates to milliseconds as below, at a third of the cost.
        return moment.isoformat(timespec="milliseconds")[:-6] + "Z"
    m = moment.astimezone(UTC)
    return (
        f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}"
        f".{m.microsecond // 1000:03d}Z"
    )


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall-clock time (UTC), for timestamps."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, for durations."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class FixedClock:
    """A clock that only moves when told to (thread-safe)."""

    def __init__(self, start: datetime | None = None, step_s: float = 0.0) -> None:
        self._now = start or datetime(2024, 1, 15, 10, 30, 0, tzinfo=UTC)
        self._mono = 0.0
        self._step = step_s
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now + timedelta(seconds=self._mono)

    def monotonic(self) -> float:
        with self._lock:
            value = self._mono
            self._mono += self._step
            return value

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._mono += seconds
