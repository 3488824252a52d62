"""While the execution store fails: hold what could not be recorded, keep new deliveries
aside (not requeued, which would spend a delivery attempt each time), stop consuming, and
resume only once every held record is durable.

A held record that keeps failing while the store itself passes its probe is that record's
fault, not the store's (a value over a limit the database reports as an internal error, say):
after `GIVE_UP_AFTER` such tries it is given up (`give_up`), so one record never stalls the
worker forever."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from runtime.errors import RecordStoreError
from runtime.oneshot import OneShot
from worker.pipeline import Decision
from worker.transport import Delivery

log = logging.getLogger("intentus.worker")

RESUME_WRITE_WAIT_S = 5.0
GIVE_UP_AFTER = 3  # failed writes of one record while the store is writable

Write = Callable[[Delivery, Decision, Callable[[bool], None]], None]
"""Record a decision and respond; the callback says whether the record was stored."""


class StoreGate:
    """Whether the store works, and what waits for it; `pause()` stops consuming."""

    def __init__(
        self,
        *,
        pause: Callable[[], None],
        give_up: Callable[[Delivery, Decision, str], None] | None = None,
    ) -> None:
        self._pause = pause
        self._give_up = give_up
        self._lock = threading.Lock()
        self.ok = True
        self._held: list[tuple[Delivery, Decision]] = []
        self._waiting: list[Delivery] = []
        self._strikes: dict[int, int] = {}  # id(decision) -> failed writes, store writable

    def claim_failed(self, delivery: Delivery) -> None:
        """Nothing ran for `delivery`: keep it until the store works again."""
        with self._lock:
            self._waiting.append(delivery)
            first, self.ok = self.ok, False
        if first:
            self._pause()

    def hold(self, delivery: Delivery, decision: Decision) -> None:
        """Its record could not be written: write it again when the store works."""
        with self._lock:
            self._held.append((delivery, decision))
            first, self.ok = self.ok, False
        if first:
            self._pause()

    def wait(self, delivery: Delivery) -> bool:
        """Keep a delivery aside while the store fails; False if it works again meanwhile."""
        with self._lock:
            if self.ok:
                return False
            self._waiting.append(delivery)
            return True

    def take_waiting(self) -> list[Delivery]:
        with self._lock:
            waiting, self._waiting = self._waiting, []
        return waiting

    def try_resume(self, write: Write, check_writable: Callable[[], None]) -> list[Delivery] | None:
        """Write the held records through the store's own write path, the first one being the
        probe; only once all are durable is the store OK. The deliveries kept aside, or None
        if the store still fails."""
        with self._lock:
            held, self._held = self._held, []
        if not held:
            # Nothing held to prove it with (a claim failed): the store's own probe must pass.
            try:
                check_writable()
            except RecordStoreError:
                return None
        for index, (delivery, decision) in enumerate(held):
            stored: OneShot[bool] = OneShot()
            write(delivery, decision, stored.set)
            # A write still running after the wait settles itself: it responds, or holds again.
            if not stored.wait(RESUME_WRITE_WAIT_S):
                with self._lock:
                    self._held.extend(held[index + 1 :])
                return None
            if not stored.value and not self._record_at_fault(delivery, decision, check_writable):
                with self._lock:
                    self._held.extend(held[index + 1 :])
                return None
        with self._lock:
            if self._held:
                return None  # a write in flight when the store failed is held now; try later
            self.ok = True
            self._strikes.clear()
            waiting, self._waiting = self._waiting, []
        log.info(
            "records writable again: %d held records settled; resuming with %d waiting deliveries",
            len(held),
            len(waiting),
        )
        return waiting

    def _record_at_fault(
        self, delivery: Delivery, decision: Decision, check_writable: Callable[[], None]
    ) -> bool:
        """Its write failed (and it is held again): True if it was given up as its own fault,
        the store passing its probe for the `GIVE_UP_AFTER`th time meanwhile."""
        if self._give_up is None:
            return False
        try:
            check_writable()
        except RecordStoreError:
            return False  # the store fails: nothing is the record's fault yet
        key = id(decision)
        with self._lock:
            strikes = self._strikes[key] = self._strikes.get(key, 0) + 1
            if strikes < GIVE_UP_AFTER:
                return False
            del self._strikes[key]
            self._held = [(d, h) for d, h in self._held if h is not decision]
        why = f"the store takes other writes but failed this record {strikes} times"
        log.error("%s: giving it up", why)
        self._give_up(delivery, decision, why)
        return True
