"""Claims on a local file system, for any number of worker processes on one host.

A claim is a small file `<records>/.claims/<executionId>` naming its owner, created complete
and atomically (written unnamed, then linked into place: `link` fails if the name exists, so
exactly one creator wins and nobody ever reads a half-written claim). Owner liveness is an
exclusive `flock` on `<records>/.owners/<owner>.lock`, held for the owner's lifetime and
released by the kernel when the process dies, however it dies: no heartbeats, no clocks.

The order of operations carries the guarantee. An owner writes its record before it removes
its claim; a claimant creates its claim before it looks for a record. So whoever wins a claim
after an earlier execution finished sees that execution's record, and nobody runs it twice.

Not for folders shared between hosts: `link` exclusivity, `flock` and attribute caching are
not dependable over NFS or similar; use the PostgreSQL store there.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import threading
from collections.abc import Callable

from runtime.claims import Claim, ClaimError, ClaimState, Holder

log = logging.getLogger("intentus.runtime.claims")

CLAIMS_DIR = ".claims"
OWNERS_DIR = ".owners"
_TOKEN = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_O_TMPFILE = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC if hasattr(os, "O_TMPFILE") else 0
_RETRIES = 20


class FileClaims:
    """Claim files plus owner locks under one records folder."""

    def __init__(self, root: str, owner: str, get_record: Callable[[str], bytes | None]) -> None:
        if not _TOKEN.match(owner):
            raise ClaimError(f"invalid owner token {owner!r}")
        self.owner = owner
        self._get_record = get_record
        self._claims = os.path.join(root, CLAIMS_DIR)
        self._owners = os.path.join(root, OWNERS_DIR)
        self._seq = 0
        self._seq_lock = threading.Lock()
        try:
            for folder in (self._claims, self._owners):
                os.makedirs(folder, mode=0o750, exist_ok=True)
            # Locked under a temporary name, then renamed into place: nobody can see the lock
            # file unlocked and tidy it away as a dead owner's.
            tmp = os.path.join(self._owners, f".{owner}.tmp")
            self._lock_fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            # Held until the process ends: the kernel releases it however the process dies.
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(tmp, self._lock_path(owner))
        except OSError as exc:
            raise ClaimError(f"cannot set up claims in {root}: {exc.strerror or exc}") from None
        self._claims_fd = os.open(self._claims, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._tmpfile = bool(_O_TMPFILE)
        self._remove_dead_owners()

    # -- owners --------------------------------------------------------------------------
    def _lock_path(self, owner: str) -> str:
        return os.path.join(self._owners, owner + ".lock")

    def alive(self, owner: str) -> bool:
        """Whether the owner's process still holds its lock (a missing lock file: dead)."""
        if owner == self.owner:
            return True
        if not _TOKEN.match(owner):
            return False
        try:
            fd = os.open(self._lock_path(owner), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise ClaimError(f"cannot check owner {owner}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also drops the shared lock, if it was granted
        return False

    def _remove_dead_owners(self) -> None:
        """Tidy lock files of owners that are gone (their claims then read as dead too)."""
        try:
            entries = list(os.scandir(self._owners))
        except OSError:
            return
        for entry in entries:
            name = entry.name.removesuffix(".lock")
            if (
                entry.name.endswith(".lock")
                and not entry.name.startswith(".")
                and name != self.owner
                and not self.alive(name)
            ):
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass

    def live_owners(self) -> set[str]:
        try:
            names = [e.name.removesuffix(".lock") for e in os.scandir(self._owners)]
        except OSError:
            return {self.owner}
        return {n for n in names if self.alive(n)}

    # -- claims --------------------------------------------------------------------------
    def _path(self, execution_id: str) -> str:
        return os.path.join(self._claims, execution_id)

    def _content(self, holder: Holder) -> bytes:
        return json.dumps(
            {"owner": holder.owner, "userId": holder.user_id, "fingerprint": holder.fingerprint},
            sort_keys=True,
        ).encode()

    def _create(self, path: str, data: bytes) -> bool:
        """Create `path` holding `data`, complete or not at all; False if it exists."""
        if self._tmpfile:
            try:
                fd = os.open(self._claims, _O_TMPFILE, 0o640)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                self._tmpfile = False
            else:
                try:
                    os.write(fd, data)
                    # linkat(AT_SYMLINK_FOLLOW) of the open unnamed file (a dir fd forces linkat)
                    os.link(
                        f"/proc/self/fd/{fd}",
                        path,
                        src_dir_fd=self._claims_fd,
                        follow_symlinks=True,
                    )
                    return True
                except FileExistsError:
                    return False
                finally:
                    os.close(fd)
        tmp = self._tmp_path()
        with open(tmp, "xb") as fh:
            fh.write(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def _tmp_path(self) -> str:
        with self._seq_lock:
            self._seq += 1
            return os.path.join(self._claims, f".{self.owner}.{self._seq}.tmp")

    def _read(self, execution_id: str) -> Holder | None:
        try:
            with open(self._path(execution_id), "rb") as fh:
                data = json.loads(fh.read())
            return Holder(str(data["owner"]), str(data["userId"]), data["fingerprint"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            # Claim files are created complete; an unreadable one was damaged outside us.
            return Holder("", "", None)

    def claim(self, execution_id: str, *, user_id: str, fingerprint: str | None) -> Claim:
        mine = Holder(self.owner, user_id, fingerprint)
        path = self._path(execution_id)
        data = self._content(mine)
        try:
            for _ in range(_RETRIES):
                if self._create(path, data):
                    # Look for a record only now: one written before we created the claim is
                    # visible, since its owner wrote it before removing its own claim.
                    record = self._get_record(execution_id)
                    if record is not None:
                        _unlink(path)
                        return Claim(ClaimState.RECORDED, execution_id, record=record)
                    return Claim(ClaimState.WON, execution_id, holder=mine)
                state = self._state_of(execution_id)
                if state is not None:
                    return state
                # The claim was released between our attempt and our read: try again.
        except OSError as exc:
            raise ClaimError(f"cannot claim {execution_id}: {exc.strerror or exc}") from None
        raise ClaimError(f"cannot claim {execution_id}: it keeps changing hands")

    def _state_of(self, execution_id: str) -> Claim | None:
        """The claim as it stands, or None if nobody holds it (and there is no record)."""
        holder = self._read(execution_id)
        record = self._get_record(execution_id)
        if record is not None:
            return Claim(ClaimState.RECORDED, execution_id, record=record)
        if holder is None:
            return None
        if self.alive(holder.owner):
            return Claim(ClaimState.RUNNING, execution_id, holder=holder)
        # Its owner is dead: one more look, it may have recorded just before it died.
        record = self._get_record(execution_id)
        if record is not None:
            return Claim(ClaimState.RECORDED, execution_id, record=record)
        return Claim(ClaimState.ORPHANED, execution_id, holder=holder)

    def take_over(self, claim: Claim, *, user_id: str, fingerprint: str | None) -> Claim:
        """Replace a dead owner's claim with ours (to record that the request is in doubt).

        Two workers taking over at once both succeed here; records are write-once, so only
        one in-doubt record is written and the other answers from it."""
        mine = Holder(self.owner, user_id, fingerprint)
        try:
            current = self._state_of(claim.execution_id)
            if current is None or current.state is not ClaimState.ORPHANED:
                return current or self.claim(
                    claim.execution_id, user_id=user_id, fingerprint=fingerprint
                )
            tmp = self._tmp_path()
            with open(tmp, "xb") as fh:
                fh.write(self._content(mine))
            os.rename(tmp, self._path(claim.execution_id))
        except OSError as exc:
            raise ClaimError(
                f"cannot take over {claim.execution_id}: {exc.strerror or exc}"
            ) from None
        return Claim(ClaimState.WON, claim.execution_id, holder=mine)

    def release(self, claim: Claim) -> None:
        """Remove our claim. Nobody replaces a live owner's claim, so no read is needed."""
        if claim.holder is not None and claim.holder.owner == self.owner:
            try:
                os.unlink(self._path(claim.execution_id))
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise ClaimError(
                    f"cannot release {claim.execution_id}: {exc.strerror or exc}"
                ) from None

    def probe(self, execution_ids: list[str]) -> dict[str, ClaimState]:
        out: dict[str, ClaimState] = {}
        try:
            for eid in execution_ids:
                state = self._state_of(eid)
                out[eid] = ClaimState.ORPHANED if state is None else state.state
        except OSError as exc:
            raise ClaimError(f"cannot check claims: {exc.strerror or exc}") from None
        return out

    def close(self) -> None:
        if self._lock_fd >= 0:
            try:
                os.unlink(self._lock_path(self.owner))
            except OSError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = -1
        if self._claims_fd >= 0:
            os.close(self._claims_fd)
            self._claims_fd = -1


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
