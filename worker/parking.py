"""Parked deliveries: duplicates waiting for a live owner's record, holding no routing thread.

A delivery whose request another live worker (or thread) is executing waits here until that
owner has recorded it or died; it then goes back to the routing threads, which answer it from
the record, or record that it is in doubt. The number parked is bounded by the prefetch: a
parked delivery stays unacknowledged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from runtime.engine import IntentusRuntime, Outcome
from runtime.errors import RecordStoreError
from runtime.supervision import Supervised
from worker.transport import Delivery

log = logging.getLogger("intentus.worker.parking")

POLL_S = 0.05


class ParkingLot:
    """One thread that checks every parked request's owner in one store round trip."""

    def __init__(self, runtime: IntentusRuntime, unpark: Callable[[Delivery], None]) -> None:
        self._runtime = runtime
        self._unpark = unpark
        self._parked: list[tuple[Delivery, Outcome]] = []
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = Supervised(self._loop, name="intentus-parking")

    def __len__(self) -> int:
        with self._cond:
            return len(self._parked)

    def start(self) -> None:
        self._thread.start()

    def park(self, delivery: Delivery, outcome: Outcome) -> None:
        with self._cond:
            self._parked.append((delivery, outcome))
            self._cond.notify()

    def deliveries(self) -> list[Delivery]:
        with self._cond:
            return [d for d, _ in self._parked]

    def drop_stale(self, generation: int) -> list[Delivery]:
        """Take out the deliveries of a lost channel: the broker redelivers them, and their
        tags may never be acked on the new one."""
        with self._cond:
            stale = [d for d, _ in self._parked if d.generation != generation]
            self._parked = [p for p in self._parked if p[0].generation == generation]
        return stale

    def drain(self) -> list[Delivery]:
        """Take every parked delivery out (shutdown: they go back to the queue)."""
        with self._cond:
            parked, self._parked = self._parked, []
        return [d for d, _ in parked]

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._parked and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                parked = list(self._parked)
            try:
                settled = self._runtime.settled_many([o for _, o in parked])
            except RecordStoreError as exc:
                log.warning("cannot check parked requests: %s", exc)
                settled = [False] * len(parked)
            ready = {id(p) for p, done in zip(parked, settled, strict=True) if done}
            if ready:
                # Hand back only what is still parked now: shutdown (drain) or a lost channel
                # (drop_stale) may have taken some out while the store was asked, and those
                # are finished with already; a second finish would count them twice.
                with self._cond:
                    taken = [p for p in self._parked if id(p) in ready]
                    self._parked = [p for p in self._parked if id(p) not in ready]
                for delivery, _ in taken:
                    self._unpark(delivery)
            with self._cond:
                if not self._stopped:
                    self._cond.wait(POLL_S)
