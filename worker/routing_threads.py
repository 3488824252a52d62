"""The worker's routing threads: INTENTUS_CONCURRENCY threads sharing one queue of jobs, new
deliveries and the rest of requests whose async agent ended, and the carry-on thread that
takes the place of one stuck in a handler past its deadline."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from runtime.invoker import Abandoned
from worker.pipeline import Delivery

log = logging.getLogger("intentus.worker")

Job = Delivery | Callable[[], None]


class RoutingThreads:
    """`take(delivery)` routes one delivery on a routing thread; it raises `Abandoned` when its
    handler overstayed (the request went on, on the carry-on thread that now takes this one's
    place in the pool)."""

    def __init__(self, count: int, *, take: Callable[[Delivery], None]) -> None:
        self.count = count
        self._take = take
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()

    def start(self) -> None:
        for i in range(self.count):
            threading.Thread(target=self._loop, name=f"intentus-pipeline-{i}", daemon=True).start()

    def put(self, job: Job) -> None:
        """Queue a delivery, or the rest of a request (the runtime's `resume`: after an async
        agent the rest waits for a routing thread like a new delivery does)."""
        self._jobs.put(job)

    def stop(self) -> None:
        """Each thread ends once it reaches the end of the queue."""
        for _ in range(self.count):
            self._jobs.put(None)

    def take_queued(self) -> list[Delivery]:
        """The deliveries that no thread has started (shutdown, pause); the requests under way
        (after an async agent) stay queued, to be finished."""
        taken: list[Delivery] = []
        under_way: list[Callable[[], None]] = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:  # pragma: no cover - only queued by stop() itself
                continue
            if isinstance(job, Delivery):
                taken.append(job)
            else:
                under_way.append(job)
        for rest in under_way:
            self._jobs.put(rest)
        return taken

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if not isinstance(job, Delivery):
                if not self._after_async(job):
                    return
                continue
            try:
                self._take(job)
            except Abandoned:
                return

    def _after_async(self, rest: Callable[[], None]) -> bool:
        """Go on with a request whose async agent ended; False if this thread must leave the
        pool (a sync agent after it overstayed: another thread took this one's place)."""
        try:
            rest()
        except Abandoned:
            return False
        except Exception:
            # A bug of ours: the delivery stays unacked (redelivered when the channel goes).
            log.exception("internal error while finishing a request after an async agent")
        return True

    def carry_on(self, rest: Callable[[], None]) -> None:
        """(watchdog; the runtime's `carry_on`) Finish a timed-out request on a new thread,
        which then joins the pool in place of the one stuck in the handler."""

        def run() -> None:
            try:
                rest()
            except Abandoned:
                return  # a later handler of the same request overstayed too
            except Exception:
                # A bug of ours past the deadline: the delivery stays unacked (the broker
                # redelivers it when the channel goes), but the pool must keep its size.
                log.exception("internal error while finishing a timed-out request")
            self._loop()

        threading.Thread(target=run, name="intentus-pipeline-carry-on", daemon=True).start()
