"""Work handed to an I/O thread by other threads, run in order on that thread."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

log = logging.getLogger("intentus.amqp")

Task = Callable[[], None]


class Mailbox:
    """Tasks posted from any thread; one wake-up of the loop drains all posted so far, so a
    burst of hand-offs costs the I/O thread one wake-up, not one per task."""

    def __init__(self) -> None:
        self._tasks: deque[Task] = deque()
        self._lock = threading.Lock()
        self._woken = False

    def post(self, task: Task, wake: Callable[[Task], None]) -> bool:
        """Queue `task`; `wake(drain)` asks the loop to drain (False if it cannot)."""
        with self._lock:
            self._tasks.append(task)
            if self._woken:
                return True  # a wake-up is on its way and will drain this too
            self._woken = True
        try:
            wake(self.drain)
        except Exception:
            with self._lock:
                self._woken = False
                try:
                    self._tasks.remove(task)
                except ValueError:
                    return True  # drained meanwhile
            return False
        return True

    def drain(self) -> None:
        """(I/O thread) Run everything posted so far, in order."""
        with self._lock:
            batch = list(self._tasks)
            self._tasks.clear()
            self._woken = False
        for task in batch:
            try:
                task()
            except Exception:
                log.exception("I/O thread task failed")

    def forget_wake_up(self) -> None:
        """A wake-up sent to a loop that closed never came: the next post sends another."""
        with self._lock:
            self._woken = False
