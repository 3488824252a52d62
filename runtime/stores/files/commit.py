"""Group commit for the files store: temp file, sync, link into place, sync, report.

A committer thread takes every record written since its last round and makes them durable
together (see runtime/stores/files/store.py for the two syncs each record needs and when `syncfs`
replaces the fsyncs). `GroupCommit` is the files store's writing half.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from runtime.errors import RecordExists, RecordStoreError, RecordUnstorable
from runtime.stores.base import Callback
from runtime.stores.files import quick

log = logging.getLogger("intentus.runtime.store")

FILE_MODE = 0o640
SYNCFS_MIN_BATCH = 2  # from this many records on, two syncfs calls beat an fsync per file
SHARDS = 4096  # shard folders `000` to `fff`, named by an executionId's first three hex digits
IDLE_BEFORE_SHARDS = 0.02  # seconds without records before the committer makes shard folders
# (it starts as soon as the store opens)


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


SYNCFS = _load_syncfs()  # None where the platform has no syncfs
O_TMPFILE_FLAGS = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC if hasattr(os, "O_TMPFILE") else 0


def umask_strips(mode: int) -> bool:
    """Whether files created with `mode` need a chmod (the umask takes bits away)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return mode & ~int(line.split()[1], 8) != mode
    except (OSError, ValueError):
        pass
    return True


class PendingRecord:
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

    def __init__(self, execution_id: str, *, data: bytes, final: str, done: Callback) -> None:
        self.execution_id = execution_id
        self.data = data
        self.final = final
        self.folder = os.path.dirname(final)
        self.done = done
        self.fd = -1
        self.tmp: str | None = None  # None: an unnamed (O_TMPFILE) file, linked via /proc
        self.new_folder = False  # its folder's own entry still needs a sync
        self.reported = False


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("cannot remove %s: %s", path, exc.strerror)


class GroupCommit:
    """The committer thread and the write path of `FileRecordStore`."""

    root: Path
    durable: bool
    _tmp: str
    _lock: threading.Lock
    _wake: threading.Condition
    _queue: list[PendingRecord]
    _closed: bool
    _seq: int
    _unsynced_folders: set[str]
    _linked: list[tuple[PendingRecord, BaseException | None]]
    _root_fd: int
    _syncfs: Callable[[int], None] | None
    _chmod: bool
    _tmpfile: bool
    _spare_shards: list[str] | None  # shard folders still to make; None: not looked yet

    def _mkdir(self, path: str, sync_parent: bool = True) -> bool:
        raise NotImplementedError

    def _write(self, batch: list[PendingRecord]) -> list[PendingRecord]:
        """(committer) Write each record to a new file; returns those written, reports the rest.

        A record that exists already fails at link time (RecordExists): the runtime looked
        for it just before routing, so checking again here would cost more than it saves."""
        written: list[PendingRecord] = []
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
                # Too large for a file here is this record's fault; anything else (disk full,
                # permissions) is the store's.
                error = RecordUnstorable if exc.errno == errno.EFBIG else RecordStoreError
                self._report(
                    [item],
                    [error(f"cannot write record {item.execution_id}: {exc.strerror or exc}")],
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
                return os.open(folder, O_TMPFILE_FLAGS, FILE_MODE), None
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                self._tmpfile = False
        with self._lock:
            self._seq += 1
            tmp = os.path.join(self._tmp, f"{execution_id}.{self._seq}.tmp")
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE), tmp

    def _link(self, item: PendingRecord) -> None:
        """Give the written file its final name; FileExistsError if the record exists."""
        if item.tmp is None:
            # linkat(AT_SYMLINK_FOLLOW) of the open unnamed file.
            quick.link(f"/proc/self/fd/{item.fd}", item.final, True)
        else:
            quick.link(item.tmp, item.final, False)

    @staticmethod
    def _release(item: PendingRecord) -> None:
        fd, item.fd = item.fd, -1
        if fd >= 0:
            quick.close(fd)
        if item.tmp is not None:
            unlink_quietly(item.tmp)
            item.tmp = None

    def _commit_loop(self) -> None:
        while True:
            with self._wake:
                idle = False
                while not self._queue and not self._closed and not self._linked:
                    if self._spare_shards == []:
                        self._wake.wait()
                    elif self._spare_shards is None or not self._wake.wait(IDLE_BEFORE_SHARDS):
                        idle = True  # a new store, or nothing came for a while
                        break
                batch, self._queue = self._queue, []
                if not batch and not self._linked and self._closed:
                    return
                # A record may have come as the wait timed out: it goes first.
                idle = idle and not batch and not self._linked
            if idle:
                self._make_shards()
                continue
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

    def _make_shards(self) -> None:
        """(committer, idle) Make the shard folders before any record needs one, so that no
        record pays for making its folder and for one more sync of the records folder (a new
        store's first few thousand records would). A record that comes meanwhile stops it: it
        waits for one folder and the sync at most."""
        root = str(self.root)
        if self._spare_shards is None:
            try:
                present = {entry.name for entry in os.scandir(root)}
            except OSError:
                present = set()
            spare = (f"{i:03x}" for i in range(SHARDS))
            self._spare_shards = [name for name in spare if name not in present]
            if not self.durable:
                self._spare_shards = []  # made as records need them, never synced anyway
        if not self._spare_shards:
            return
        # Synced with the next record if not below: a record in a new folder is durable only
        # once the folder's own entry is.
        self._unsynced_folders.add(root)
        try:
            while self._spare_shards and not self._queue and not self._closed:
                self._mkdir(os.path.join(root, self._spare_shards.pop()), sync_parent=False)
            fsync_dir(root)
            self._unsynced_folders.discard(root)
        except OSError as exc:
            # Disk full or the like: the records that need a folder make it (or fail) then.
            log.info("cannot make shard folders in %s: %s", root, exc.strerror or exc)
            self._spare_shards = []

    def _commit(self, batch: list[PendingRecord]) -> None:
        batch = self._write(batch)
        if self._syncfs is not None and (
            self._linked
            or len(batch) >= SYNCFS_MIN_BATCH
            # A lone record in a new folder would need three fsyncs (file, folder, records
            # folder); the two syncs do it.
            or self._unsynced_folders
            or any(item.new_folder for item in batch)
        ):
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
                    fsync_dir(folder)
                    self._unsynced_folders.discard(folder)
                except OSError as exc:
                    for i, item in enumerate(batch):
                        if item.folder == folder and results[i] is None:
                            results[i] = RecordStoreError(
                                f"cannot sync folder of {item.execution_id}: {exc.strerror or exc}"
                            )
        self._report(batch, results)

    def _sync_existing(self, item: PendingRecord) -> BaseException:
        if self.durable:
            try:
                fd = os.open(item.final, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                fsync_dir(item.folder)
            except OSError as exc:
                return RecordStoreError(
                    f"cannot sync existing record {item.execution_id}: {exc.strerror or exc}"
                )
        return RecordExists(item.execution_id)

    def _commit_syncfs(self, batch: list[PendingRecord], syncfs: Callable[[int], None]) -> None:
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
        failed: list[PendingRecord] = []
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
    def _report(batch: list[PendingRecord], results: list[BaseException | None]) -> None:
        for item, result in zip(batch, results, strict=True):
            if item.reported:
                continue
            item.reported = True
            try:
                item.done(result)
            except Exception:
                log.exception("record commit callback failed")
