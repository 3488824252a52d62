"""Which executions have started and not yet been recorded: here, and in other processes.

Locally: a dict of executionId → waiter, so a duplicate that arrives while the first is
running waits for its record instead of running the agent again.

Across processes: each runtime appends `S <executionId> <bound_ms>` to its own journal before
the first agent starts and `E <executionId>` once the record is durable. The journal is held
under an exclusive `flock` for the life of the process, so the lock vanishes with the
process: a journal whose lock can be taken belongs to a dead worker, and its started-but-
unrecorded executions are *in doubt*. Reading other journals costs nothing on the hot path:
dead journals are read when they appear (checked at most once a second), live ones only for
deliveries that may be duplicates.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
from _thread import allocate_lock as _allocate_lock
from collections.abc import Callable
from dataclasses import dataclass, field

from runtime.errors import IntentusError

log = logging.getLogger("intentus.runtime.inflight")

ROTATE_BYTES = 64 * 1024 * 1024
REFRESH_S = 1.0


class Flag:
    """A set-once event on a bare lock (a claim per request must cost next to nothing)."""

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._lock = _allocate_lock()
        self._lock.acquire()
        self._set = False

    def set(self) -> None:
        if not self._set:
            self._set = True
            self._lock.release()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        if self._lock.acquire(timeout=max(0.0, timeout)):
            self._lock.release()  # let the next waiter through
            return True
        return False


@dataclass(slots=True)
class LocalRun:
    bound_s: float
    done: Flag = field(default_factory=Flag)
    journaled: bool = False


@dataclass(slots=True)
class _View:
    inode: int
    offset: int = 0
    started: dict[str, float] = field(default_factory=dict)  # executionId -> bound seconds
    dead: bool = False


class InflightTracker:
    """Local claims plus (with a folder) the per-process journals."""

    def __init__(
        self,
        folder: str | os.PathLike[str] | None,
        owner: str,
        monotonic: Callable[[], float],
        exists: Callable[[str], bool],
    ) -> None:
        self._local: dict[str, LocalRun] = {}
        self._lock = threading.Lock()
        self._mono = monotonic
        self._exists = exists
        self.owner = owner
        self.folder = os.fspath(folder) if folder is not None else None
        self._fd = -1
        self._written = 0
        self._views: dict[str, _View] = {}
        self._orphans: dict[str, str] = {}  # executionId -> journal it came from
        self._next_refresh = 0.0
        self._scan_lock = threading.Lock()
        if self.folder is not None:
            os.makedirs(self.folder, mode=0o750, exist_ok=True)
            self._set_aside_predecessor()
            self._fd = self._open_journal()

    def _set_aside_predecessor(self) -> None:
        # A restarted container often keeps its worker id (same hostname, pid 1): its dead
        # predecessor's journal must stay readable as a dead one, not be overwritten.
        path = self._path(self.owner)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DuplicateWorkerId(
                    f"another live worker uses the worker id {self.owner!r}; worker ids must be unique"
                ) from None
            os.rename(path, self._path(f"{self.owner}.prev-{os.fstat(fd).st_ino}"))
        finally:
            os.close(fd)

    # -- own journal ---------------------------------------------------------------------
    def _path(self, owner: str) -> str:
        assert self.folder is not None
        return os.path.join(self.folder, owner + ".journal")

    def _open_journal(self) -> int:
        # Lock under a temporary name first, so nobody ever sees our journal unlocked.
        tmp = self._path(self.owner) + f".{os.getpid()}.new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o640)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Called with self._lock held (or before any thread exists): the executions still
        # running move to the new journal, and no append can slip in between.
        live = "".join(
            f"S {eid} {int(run.bound_s * 1000)}\n"
            for eid, run in self._local.items()
            if run.journaled
        ).encode()
        if live:
            os.write(fd, live)
        self._written = len(live)
        os.rename(tmp, self._path(self.owner))
        return fd

    def _append(self, line: str) -> None:
        if self._fd < 0:
            return
        data = line.encode()
        with self._lock:
            os.write(self._fd, data)
            self._written += len(data)
            if self._written > ROTATE_BYTES:
                old, self._fd = self._fd, self._open_journal()
                os.close(old)

    # -- claims --------------------------------------------------------------------------
    def claim(self, execution_id: str, bound_s: float) -> LocalRun | None:
        """Claim an execution in this process; returns None, or the run already in progress."""
        with self._lock:
            running = self._local.get(execution_id)
            if running is not None:
                return running
            self._local[execution_id] = LocalRun(bound_s)
        return None

    def journal_start(self, execution_id: str, bound_s: float) -> None:
        """The first agent is about to run: from now on a crash leaves the request in doubt."""
        run = self._local.get(execution_id)
        if run is not None:
            run.bound_s = bound_s
            run.journaled = True
        self._append(f"S {execution_id} {int(bound_s * 1000)}\n")

    def release(self, execution_id: str, recorded: bool = True) -> None:
        """The record is durable (or the execution will never be recorded by us)."""
        if recorded:
            self._append(f"E {execution_id}\n")
        with self._lock:
            run = self._local.pop(execution_id, None)
        if run is not None:
            run.done.set()

    def unrecorded(self, execution_id: str) -> None:
        """This process ran it but could not record it: later deliveries are in doubt."""
        with self._lock:
            run = self._local.pop(execution_id, None)
            self._orphans[execution_id] = self.owner
        if run is not None:
            run.done.set()

    # -- other processes -----------------------------------------------------------------
    def foreign(self, execution_id: str, thorough: bool) -> tuple[str, float] | None:
        """('dead', 0) if a dead process started it unrecorded, ('running', bound_s) if a live
        one is running it, else None. Only `thorough` lookups read live journals."""
        if execution_id in self._orphans:
            return ("dead", 0.0)
        if self.folder is None:
            return None
        now = self._mono()
        if thorough or now >= self._next_refresh:
            self._refresh(read_live=thorough)
            self._next_refresh = now + REFRESH_S
        if execution_id in self._orphans:
            return ("dead", 0.0)
        if thorough:
            for view in list(self._views.values()):  # _refresh may change it meanwhile
                if not view.dead and execution_id in view.started:
                    return ("running", view.started[execution_id])
        return None

    def resolved(self, execution_id: str) -> None:
        """An orphan got its record (for example an in-doubt one)."""
        self._orphans.pop(execution_id, None)

    def live_owners(self) -> set[str]:
        self._refresh(read_live=False)
        return {name[: -len(".journal")] for name, v in self._views.items() if not v.dead} | {
            self.owner
        }

    def _refresh(self, read_live: bool) -> None:
        assert self.folder is not None
        with self._scan_lock:
            try:
                names = [n for n in os.listdir(self.folder) if n.endswith(".journal")]
            except FileNotFoundError:
                return
            own = self.owner + ".journal"
            present = set(names)
            for gone in [n for n in self._views if n not in present]:
                del self._views[gone]
            for name in names:
                if name == own:
                    continue
                self._scan(name, read_live)
            # Snapshot: pipeline threads add and resolve orphans while we scan.
            for eid in [e for e in list(self._orphans) if self._exists(e)]:
                self._orphans.pop(eid, None)

    def _scan(self, name: str, read_live: bool) -> None:
        assert self.folder is not None
        path = os.path.join(self.folder, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            st = os.fstat(fd)
            view = self._views.get(name)
            if view is None or view.inode != st.st_ino:
                view = self._views[name] = _View(st.st_ino)
            try:
                # Shared, so that several probers never mistake each other for the owner.
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                dead = True
            except BlockingIOError:
                dead = False
            if dead and not view.dead:
                read_live = True  # read it to the end once, now that it is final
            if dead or read_live:
                self._read(fd, view)
            if dead:
                view.dead = True
                for eid in list(view.started):
                    if self._exists(eid):
                        del view.started[eid]
                    else:
                        self._orphans[eid] = name
                if not view.started:
                    # Every execution it started is recorded: the journal has served. Other
                    # workers sharing the folder may remove it at the same moment.
                    try:
                        os.unlink(path)
                        log.info("removed journal %s of a stopped worker", name)
                    except FileNotFoundError:
                        pass
                    self._views.pop(name, None)
        finally:
            os.close(fd)  # also releases our probe lock

    @staticmethod
    def _read(fd: int, view: _View) -> None:
        os.lseek(fd, view.offset, os.SEEK_SET)
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        end = data.rfind(b"\n") + 1  # ignore a torn last line
        view.offset += end
        for line in data[:end].decode("ascii", "replace").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "S" and _ID.match(parts[1]):
                try:
                    view.started[parts[1]] = int(parts[2]) / 1000.0
                except ValueError:
                    view.started[parts[1]] = 0.0
            elif len(parts) == 2 and parts[0] == "E":
                view.started.pop(parts[1], None)

    def close(self) -> None:
        """Clean stop: nothing is in flight, so the journal has nothing to tell anyone."""
        if self._fd >= 0:
            with self._lock:
                clean = not self._local
            if clean:
                try:
                    os.unlink(self._path(self.owner))
                except FileNotFoundError:
                    pass
            os.close(self._fd)
            self._fd = -1


_ID = re.compile(r"^exec-[0-9a-f]{24}$")


class DuplicateWorkerId(IntentusError):
    """Two live processes share one worker id over the same records folder."""
