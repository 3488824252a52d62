"""Record stores: where ExecutionRecords live, one immutable JSON document per executionId.

`FileRecordStore` keeps one file `<executionId>.json` per record under `<dir>/<hhh>/`, where
`hhh` are the id's first three hex digits (4096 folders, so none grows to millions of
entries, and any record is found from its id alone). Writes are atomic and durable: the
bytes go to a temp file which is fsynced, then hard-linked into place (which fails if the
record exists, so records are never rewritten), then the folder is fsynced. A committer
thread syncs everything written since its last round together (group commit), so
concurrent writers share the cost of a sync.

On Linux, under load, records are made durable with `syncfs` on the records filesystem
instead of an fsync per file and per folder. Each record needs two syncs: one after its temp
file is written (its data is durable before it is linked into place, so a crash never leaves
a torn record), one after it is linked (the name, and any new shard folder, are durable
before anyone is told). The rounds are pipelined: one syncfs makes the previous round's
links and this round's data durable together. An fsync per file and folder costs several
times more kernel CPU per record than a syncfs shared by a batch; a lone record (no other in
its round or awaiting its second sync) still uses the fsyncs.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from runtime.claims import Claim, ClaimState, MemoryClaims, new_owner_token
from runtime.errors import RecordExists, RecordStoreError
from runtime.fileclaims import CLAIMS_DIR, FileClaims

log = logging.getLogger("intentus.runtime.store")

EXECUTION_ID = re.compile(r"^exec-[0-9a-f]{24}$")
FILE_MODE = 0o640
DIR_MODE = 0o750
TMP_DIR = ".tmp"

Callback = Callable[[BaseException | None], None]
SYNCFS_MIN_BATCH = 2  # from this many records on, two syncfs calls beat an fsync per file


def _load_syncfs() -> Callable[[int], None] | None:
    """`syncfs(fd)` from the C library, or None where there is none (not Linux)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        if fn(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return syncfs


_syncfs = _load_syncfs()
_O_TMPFILE_FLAGS = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC if hasattr(os, "O_TMPFILE") else 0


def _umask_strips(mode: int) -> bool:
    """Whether files created with `mode` need a chmod (the umask takes bits away)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return mode & ~int(line.split()[1], 8) != mode
    except (OSError, ValueError):
        pass
    return True


def put_and_wait(
    put_async: Callable[[str, bytes, Callback], None], execution_id: str, data: bytes
) -> None:
    """A group-committed write made synchronous: return once durable, or raise its error."""
    box: list[BaseException | None] = []
    event = threading.Event()

    def done(exc: BaseException | None) -> None:
        box.append(exc)
        event.set()

    put_async(execution_id, data, done)
    event.wait()
    if box[0] is not None:
        raise box[0]


def check_execution_id(execution_id: str) -> str:
    """Only well-formed ids ever become paths; anything else is rejected."""
    if not isinstance(execution_id, str) or not EXECUTION_ID.match(execution_id):
        raise RecordStoreError(f"invalid executionId {execution_id!r}")
    return execution_id


class RecordStore(Protocol):
    """Write-once records plus the claims that decide who writes them (runtime/claims.py)."""

    owner: str

    def claim(self, execution_id: str, *, user_id: str, fingerprint: str | None) -> Claim: ...
    def take_over(self, claim: Claim, *, user_id: str, fingerprint: str | None) -> Claim: ...
    def release(self, claim: Claim) -> None: ...
    def probe(self, execution_ids: list[str]) -> dict[str, ClaimState]: ...
    def get(self, execution_id: str) -> bytes | None: ...
    def exists(self, execution_id: str) -> bool: ...
    def put(self, execution_id: str, data: bytes) -> None: ...
    def put_async(self, execution_id: str, data: bytes, done: Callback) -> None: ...
    def delete(self, execution_id: str) -> bool: ...
    def ids(self) -> Iterator[str]: ...
    def check_writable(self) -> None: ...
    def close(self) -> None: ...


class MemoryRecordStore:
    """Records in a dict: for embedding and tests (nothing survives the process)."""

    def __init__(self, owner: str | None = None) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.owner = owner or new_owner_token("memory")
        self._claims = MemoryClaims(self.owner, self)

    def claim(self, execution_id: str, *, user_id: str, fingerprint: str | None) -> Claim:
        return self._claims.claim(execution_id, user_id=user_id, fingerprint=fingerprint)

    def take_over(self, claim: Claim, *, user_id: str, fingerprint: str | None) -> Claim:
        return self._claims.take_over(claim, user_id=user_id, fingerprint=fingerprint)

    def release(self, claim: Claim) -> None:
        self._claims.release(claim)

    def probe(self, execution_ids: list[str]) -> dict[str, ClaimState]:
        return self._claims.probe(execution_ids)

    def get(self, execution_id: str) -> bytes | None:
        return self._data.get(execution_id)

    def exists(self, execution_id: str) -> bool:
        return execution_id in self._data

    def put(self, execution_id: str, data: bytes) -> None:
        check_execution_id(execution_id)
        with self._lock:
            if execution_id in self._data:
                raise RecordExists(execution_id)
            self._data[execution_id] = bytes(data)

    def put_async(self, execution_id: str, data: bytes, done: Callback) -> None:
        try:
            self.put(execution_id, data)
        except RecordStoreError as exc:
            done(exc)
        else:
            done(None)

    def delete(self, execution_id: str) -> bool:
        with self._lock:
            return self._data.pop(execution_id, None) is not None

    def ids(self) -> Iterator[str]:
        return iter(sorted(self._data))

    def check_writable(self) -> None:
        return None

    def close(self) -> None:
        return None


class _Pending:
    __slots__ = (
        "data",
        "done",
        "execution_id",
        "fd",
        "final",
        "folder",
        "new_folder",
        "reported",
        "tmp",
    )

    def __init__(self, execution_id: str, data: bytes, final: str, done: Callback) -> None:
        self.execution_id = execution_id
        self.data = data
        self.final = final
        self.folder = os.path.dirname(final)
        self.done = done
        self.fd = -1
        self.tmp: str | None = None  # None: an unnamed (O_TMPFILE) file, linked via /proc
        self.new_folder = False  # its folder's own entry still needs a sync
        self.reported = False


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileRecordStore:
    """Durable, sharded, write-once JSON files with group-committed fsyncs."""

    def __init__(
        self, root: str | os.PathLike[str], *, owner: str | None = None, durable: bool = True
    ) -> None:
        self.root = Path(root)
        self.durable = durable
        self.owner = re.sub(r"[^A-Za-z0-9._-]", "_", owner or new_owner_token(f"p{os.getpid()}"))
        self._unsynced_folders: set[str] = set()
        self._made: set[str] = set()
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._seq = 0
        try:
            self._mkdir(str(self.root))
            self._tmp = str(self.root / TMP_DIR / self.owner)
            self._mkdir(str(self.root / TMP_DIR))
            self._mkdir(self._tmp)
        except OSError as exc:
            raise RecordStoreError(
                f"records folder {self.root} is not usable: {exc.strerror or exc}"
            ) from None
        self._syncfs = _syncfs if durable else None
        # Linked in place (or found to exist already), names not yet synced.
        self._linked: list[tuple[_Pending, BaseException | None]] = []
        try:
            self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            self._root_fd = -1
            self._syncfs = None
        self._chmod = _umask_strips(FILE_MODE)
        self._tmpfile = self._root_fd >= 0 and self._probe_tmpfile()
        try:
            self.claims = FileClaims(str(self.root), self.owner, self.get)
        except RecordStoreError as exc:
            raise RecordStoreError(f"records folder {self.root} is not usable: {exc}") from None
        removed = self.remove_stale_temp(self.claims.live_owners())
        if removed:
            log.info("removed %d temp files left by stopped workers", removed)
        self._committer = threading.Thread(
            target=self._commit_loop, name="intentus-record-commit", daemon=True
        )
        self._committer.start()

    # -- claims (runtime/fileclaims.py) --------------------------------------------------
    def claim(self, execution_id: str, *, user_id: str, fingerprint: str | None) -> Claim:
        check_execution_id(execution_id)
        return self.claims.claim(execution_id, user_id=user_id, fingerprint=fingerprint)

    def take_over(self, claim: Claim, *, user_id: str, fingerprint: str | None) -> Claim:
        return self.claims.take_over(claim, user_id=user_id, fingerprint=fingerprint)

    def release(self, claim: Claim) -> None:
        self.claims.release(claim)

    def probe(self, execution_ids: list[str]) -> dict[str, ClaimState]:
        return self.claims.probe(execution_ids)

    def _probe_tmpfile(self) -> bool:
        """Whether unnamed files can be created here and linked into place."""
        if _O_TMPFILE_FLAGS == 0:
            return False
        probe = os.path.join(self._tmp, f"probe.{os.getpid()}.{time.monotonic_ns()}")
        try:
            fd = os.open(self._tmp, _O_TMPFILE_FLAGS, FILE_MODE)
        except OSError:
            return False
        try:
            os.link(f"/proc/self/fd/{fd}", probe, src_dir_fd=self._root_fd, follow_symlinks=True)
        except OSError:
            return False
        finally:
            os.close(fd)
        _unlink(probe)
        return True

    # -- paths ---------------------------------------------------------------------------
    def folder_for(self, execution_id: str) -> str:
        return os.path.join(self.root, execution_id[5:8])

    def path_for(self, execution_id: str) -> str:
        check_execution_id(execution_id)
        return os.path.join(self.root, execution_id[5:8], execution_id + ".json")

    def _mkdir(self, path: str, sync_parent: bool = True) -> bool:
        """Create the folder if needed; True if it was created and its parent not synced."""
        if path in self._made:
            return False
        created = False
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            pass
        else:
            os.chmod(path, DIR_MODE)  # whatever the umask
            if self.durable and sync_parent:
                _fsync_dir(os.path.dirname(path.rstrip("/")) or ".")
            else:
                created = True
        self._made.add(path)
        return created

    # -- reads ---------------------------------------------------------------------------
    def get(self, execution_id: str) -> bytes | None:
        try:
            with open(self.path_for(execution_id), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RecordStoreError(
                f"cannot read record {execution_id}: {exc.strerror or exc}"
            ) from None

    def exists(self, execution_id: str) -> bool:
        return os.path.exists(self.path_for(execution_id))

    def ids(self) -> Iterator[str]:
        try:
            shards = sorted(
                e.name for e in os.scandir(self.root) if e.is_dir() and len(e.name) == 3
            )
        except FileNotFoundError:
            return
        for shard in shards:
            try:
                names = sorted(os.listdir(os.path.join(self.root, shard)))
            except FileNotFoundError:
                continue
            for name in names:
                if name.endswith(".json") and EXECUTION_ID.match(name[:-5]):
                    yield name[:-5]

    # -- writes --------------------------------------------------------------------------
    def put(self, execution_id: str, data: bytes) -> None:
        """Write and return once durable; RecordExists if it is already stored."""
        put_and_wait(self.put_async, execution_id, data)

    def put_async(self, execution_id: str, data: bytes, done: Callback) -> None:
        """Queue the bytes; `done(None)` runs once they are durable (or `done(exc)`).

        The committer thread writes them too: the routing threads make no file system calls
        for a record, so they do not trade the GIL around each one."""
        try:
            final = self.path_for(execution_id)
        except RecordStoreError as exc:
            done(exc)
            return
        with self._wake:
            if self._closed:
                closed = True
            else:
                closed = False
                self._queue.append(_Pending(execution_id, data, final, done))
                self._wake.notify()
        if closed:
            done(RecordStoreError("record store is closed"))

    def _write(self, batch: list[_Pending]) -> list[_Pending]:
        """(committer) Write each record to a new file; returns those written, reports the rest.

        A record that exists already fails at link time (RecordExists): the runtime looked
        for it just before routing, so checking again here would cost more than it saves."""
        written: list[_Pending] = []
        for item in batch:
            try:
                item.new_folder = self._mkdir(item.folder, sync_parent=False)
                item.fd, item.tmp = self._open_temp(item.execution_id, item.folder)
                try:
                    if self._chmod:
                        os.fchmod(item.fd, FILE_MODE)
                    view = memoryview(item.data)
                    while view:
                        view = view[os.write(item.fd, view) :]
                except BaseException:
                    self._release(item)
                    raise
            except OSError as exc:
                self._report(
                    [item],
                    [
                        RecordStoreError(
                            f"cannot write record {item.execution_id}: {exc.strerror or exc}"
                        )
                    ],
                )
                continue
            item.data = b""
            written.append(item)
        return written

    def _open_temp(self, execution_id: str, folder: str) -> tuple[int, str | None]:
        """A new file for the record's bytes: unnamed in its shard folder where the system
        allows (nothing to unlink, nothing left behind by a crash), else named in our temp
        folder."""
        if self._tmpfile:
            try:
                return os.open(folder, _O_TMPFILE_FLAGS, FILE_MODE), None
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                self._tmpfile = False
        with self._lock:
            self._seq += 1
            tmp = os.path.join(self._tmp, f"{execution_id}.{self._seq}.tmp")
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE), tmp

    def _link(self, item: _Pending) -> None:
        """Give the written file its final name; FileExistsError if the record exists."""
        if item.tmp is None:
            # linkat(AT_SYMLINK_FOLLOW) of the open unnamed file (a dir fd forces linkat).
            os.link(
                f"/proc/self/fd/{item.fd}",
                item.final,
                src_dir_fd=self._root_fd,
                follow_symlinks=True,
            )
        else:
            os.link(item.tmp, item.final)

    @staticmethod
    def _release(item: _Pending) -> None:
        fd, item.fd = item.fd, -1
        if fd >= 0:
            os.close(fd)
        if item.tmp is not None:
            _unlink(item.tmp)
            item.tmp = None

    def _commit_loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closed and not self._linked:
                    self._wake.wait()
                batch, self._queue = self._queue, []
                if not batch and not self._linked and self._closed:
                    return
            try:
                self._commit(batch)
            except Exception as exc:
                # A bug must not leave writers waiting forever: fail what was in hand (the
                # worker then pauses as for any write error) and keep committing.
                log.exception("record committer failed")
                linked, self._linked = self._linked, []
                items = [*batch, *(item for item, _ in linked)]
                for item in items:
                    try:
                        self._release(item)
                    except OSError:
                        pass
                error = RecordStoreError(f"record committer failed: {exc!r}")
                self._report(items, [error] * len(items))

    def _commit(self, batch: list[_Pending]) -> None:
        batch = self._write(batch)
        if self._syncfs is not None and (self._linked or len(batch) >= SYNCFS_MIN_BATCH):
            self._commit_syncfs(batch, self._syncfs)
            return
        results: list[BaseException | None] = [None] * len(batch)
        for i, item in enumerate(batch):
            try:
                if self.durable:
                    os.fsync(item.fd)
            except OSError as exc:
                results[i] = RecordStoreError(
                    f"cannot sync record {item.execution_id}: {exc.strerror or exc}"
                )
        # A new shard folder's entry is synced with the first batch that can, even if the
        # record that created it failed: later records in it are not marked new.
        for item in batch:
            if item.new_folder:
                self._unsynced_folders.add(os.path.dirname(item.folder))
        folders: set[str] = set(self._unsynced_folders)
        for i, item in enumerate(batch):
            if results[i] is None:
                try:
                    self._link(item)
                    folders.add(item.folder)
                except FileExistsError:
                    # Lost to a record written meanwhile: nobody may answer from it before it
                    # is durable, and its writer may not have synced it yet.
                    results[i] = self._sync_existing(item)
                except OSError as exc:
                    results[i] = RecordStoreError(
                        f"cannot store record {item.execution_id}: {exc.strerror or exc}"
                    )
            self._release(item)
        if self.durable:
            for folder in folders:
                try:
                    _fsync_dir(folder)
                    self._unsynced_folders.discard(folder)
                except OSError as exc:
                    for i, item in enumerate(batch):
                        if item.folder == folder and results[i] is None:
                            results[i] = RecordStoreError(
                                f"cannot sync folder of {item.execution_id}: {exc.strerror or exc}"
                            )
        self._report(batch, results)

    def _sync_existing(self, item: _Pending) -> BaseException:
        if self.durable:
            try:
                fd = os.open(item.final, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                _fsync_dir(item.folder)
            except OSError as exc:
                return RecordStoreError(
                    f"cannot sync existing record {item.execution_id}: {exc.strerror or exc}"
                )
        return RecordExists(item.execution_id)

    def _commit_syncfs(self, batch: list[_Pending], syncfs: Callable[[int], None]) -> None:
        """One syncfs per round makes the previous round's links durable (they are reported
        now) and this round's data durable (so it can be linked, and reported next round)."""
        waiting, self._linked = self._linked, []
        error: RecordStoreError | None = None
        try:
            syncfs(self._root_fd)
            self._unsynced_folders.clear()
        except OSError as exc:
            error = RecordStoreError(f"cannot sync records: {exc.strerror or exc}")
        self._report(
            [w[0] for w in waiting], [error if error is not None else w[1] for w in waiting]
        )
        failed: list[_Pending] = []
        errors: list[BaseException | None] = []
        for item in batch:
            if error is not None:
                failed.append(item)
                errors.append(error)
            else:
                try:
                    self._link(item)
                    self._linked.append((item, None))
                except FileExistsError:
                    # Reported after the next sync too: the record that won may be one of
                    # this round's, and nobody may answer from it before it is durable.
                    self._linked.append((item, RecordExists(item.execution_id)))
                except OSError as exc:
                    failed.append(item)
                    errors.append(
                        RecordStoreError(
                            f"cannot store record {item.execution_id}: {exc.strerror or exc}"
                        )
                    )
            self._release(item)
        self._report(failed, errors)

    @staticmethod
    def _report(batch: list[_Pending], results: list[BaseException | None]) -> None:
        for item, result in zip(batch, results, strict=True):
            if item.reported:
                continue
            item.reported = True
            try:
                item.done(result)
            except Exception:
                log.exception("record commit callback failed")

    def delete(self, execution_id: str) -> bool:
        try:
            os.unlink(self.path_for(execution_id))
            return True
        except FileNotFoundError:
            return False

    def check_writable(self) -> None:
        """Raise RecordStoreError unless files can be written and synced now, where the write
        path writes them: the temp folder and the claims folder."""
        name = f"probe.{os.getpid()}.{time.monotonic_ns()}"
        probes = [os.path.join(self._tmp, name), os.path.join(self.root, CLAIMS_DIR, "." + name)]
        try:
            self._made.discard(self._tmp)
            self._mkdir(str(self.root / TMP_DIR))
            self._mkdir(self._tmp)
            for probe in probes:
                fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
                try:
                    os.write(fd, b"x" * 4096)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise RecordStoreError(
                f"records folder {self.root} is not writable: {exc.strerror or exc}"
            ) from None
        finally:
            for probe in probes:
                _unlink(probe)

    def remove_stale_temp(self, live_owners: set[str]) -> int:
        """Delete temp files of owners that are no longer running (crashed writers)."""
        removed = 0
        base = self.root / TMP_DIR
        try:
            owners = list(os.scandir(base))
        except FileNotFoundError:
            return 0
        for entry in owners:
            # Never follow a link: cleaning up must not reach outside the records folder.
            if (
                entry.name == self.owner
                or entry.name in live_owners
                or not entry.is_dir(follow_symlinks=False)
            ):
                continue
            for leftover in os.scandir(entry.path):
                if leftover.is_file(follow_symlinks=False) or leftover.is_symlink():
                    _unlink(leftover.path)
                    removed += 1
            try:
                os.rmdir(entry.path)
            except OSError:
                pass
        return removed

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._committer.join(timeout=30)
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1
        for leftover in os.scandir(self._tmp) if os.path.isdir(self._tmp) else ():
            _unlink(leftover.path)
        try:
            os.rmdir(self._tmp)
        except OSError:
            pass
        if hasattr(self, "claims"):
            self.claims.close()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("cannot remove %s: %s", path, exc.strerror)
