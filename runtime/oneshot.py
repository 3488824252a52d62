"""A value set once and waited for: a write's outcome, a call's reply."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class OneShot(Generic[T]):
    """Set once (later sets are ignored); readers wait for it with a deadline."""

    __slots__ = ("_event", "_lock", "_value")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._value: T | None = None

    def set(self, value: T) -> None:
        """Store `value` unless one was stored already (then this call does nothing)."""
        with self._lock:
            if self._event.is_set():
                return
            self._value = value
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    @property
    def value(self) -> T | None:
        return self._value


__all__ = ["OneShot"]
