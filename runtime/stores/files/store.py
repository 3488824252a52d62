"""The files execution store: one immutable JSON file per executionId.

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
its round or awaiting its second sync) still uses the fsyncs, unless its folder is new (then
the fsyncs would be three: file, folder, records folder). An idle committer makes the shard
folders ahead of the records, from the moment the store opens.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from runtime.claims import Claim, ClaimState, new_owner_token
from runtime.errors import RecordStoreError
from runtime.stores.base import EXECUTION_ID, Callback, check_execution_id, put_and_wait
from runtime.stores.files import quick
from runtime.stores.files.claims import CLAIMS_DIR, FileClaims
from runtime.stores.files.commit import (
    FILE_MODE,
    O_TMPFILE_FLAGS,
    SYNCFS,
    GroupCommit,
    PendingRecord,
    fsync_dir,
    umask_strips,
    unlink_quietly,
)
from runtime.supervision import Supervised

log = logging.getLogger("intentus.runtime.store")

DIR_MODE = 0o750
TMP_DIR = ".tmp"


class FileRecordStore(GroupCommit):
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
        self._queue: list[PendingRecord] = []
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._seq = 0
        self._spare_shards: list[str] | None = None
        try:
            self._mkdir(str(self.root))
            self._tmp = str(self.root / TMP_DIR / self.owner)
            self._mkdir(str(self.root / TMP_DIR))
            self._mkdir(self._tmp)
        except OSError as exc:
            raise RecordStoreError(
                f"records folder {self.root} is not usable: {exc.strerror or exc}"
            ) from None
        self._syncfs = SYNCFS if durable else None
        # Linked in place (or found to exist already), names not yet synced.
        self._linked: list[tuple[PendingRecord, BaseException | None]] = []
        try:
            self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            self._root_fd = -1
            self._syncfs = None
        self._chmod = umask_strips(FILE_MODE)
        self._tmpfile = self._root_fd >= 0 and self._probe_tmpfile()
        try:
            self.claims = FileClaims(str(self.root), self.owner, self.get)
        except RecordStoreError as exc:
            raise RecordStoreError(f"records folder {self.root} is not usable: {exc}") from None
        removed = self.remove_stale_temp(self.claims.live_owners())
        if removed:
            log.info("removed %d temp files left by stopped workers", removed)
        self._committer = Supervised(self._commit_loop, name="intentus-record-commit")
        self._committer.start()

    # -- claims (runtime/stores/files/claims.py) --------------------------------------------------
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
        if O_TMPFILE_FLAGS == 0:
            return False
        probe = os.path.join(self._tmp, f"probe.{os.getpid()}.{time.monotonic_ns()}")
        try:
            fd = os.open(self._tmp, O_TMPFILE_FLAGS, FILE_MODE)
        except OSError:
            return False
        try:
            os.link(f"/proc/self/fd/{fd}", probe, src_dir_fd=self._root_fd, follow_symlinks=True)
        except OSError:
            return False
        finally:
            os.close(fd)
        unlink_quietly(probe)
        return True

    # -- paths ---------------------------------------------------------------------------
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
                fsync_dir(os.path.dirname(path.rstrip("/")) or ".")
            else:
                created = True
        self._made.add(path)
        return created

    # -- reads ---------------------------------------------------------------------------
    def get(self, execution_id: str) -> bytes | None:
        try:
            # Usually asked when there is none (a claim just won): the failed open is quick.
            fd = quick.open_fd(self.path_for(execution_id), os.O_RDONLY, 0)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RecordStoreError(
                f"cannot read record {execution_id}: {exc.strerror or exc}"
            ) from None
        try:
            with open(fd, "rb") as fh:
                return fh.read()
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
                self._queue.append(PendingRecord(execution_id, data=data, final=final, done=done))
                self._wake.notify()
        if closed:
            done(RecordStoreError("record store is closed"))

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
                unlink_quietly(probe)

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
                    unlink_quietly(leftover.path)
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
            unlink_quietly(leftover.path)
        try:
            os.rmdir(self._tmp)
        except OSError:
            pass
        if hasattr(self, "claims"):
            self.claims.close()
