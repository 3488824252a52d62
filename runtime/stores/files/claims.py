"""Claims on a local file system, for any number of worker processes on one host.

Each owner (one per process) has a lock file `<records>/.owners/<owner>.lock` holding its
token, under an exclusive POSIX record lock (`fcntl`) for the owner's whole life; the kernel
releases it when the process dies, however it dies: no heartbeats, no clocks. A claim is a hard
link of that lock file at `<records>/.claims/<executionId>`: `link` fails if the name exists,
so exactly one claimant wins, and a link adds a name, not a file (creating a file costs several
times more here). Whoever finds the name taken opens it and tries a shared lock: refused means
the owner is alive (same inode, same lock); granted means it is dead and the claim is orphaned.

Why record locks and not `flock` (or open-file-description locks): those belong to the open
file description, which a forked child shares, so a child an agent forks would hold its dead
worker's lock for as long as it lives, and every duplicate would wait for the child. A record
lock belongs to the process: a child never holds its parent's. Two of its rules shape the code
here. A process never conflicts with its own record locks, so owners of this process (several
stores in one process, as in tests) are known from a process-wide table rather than probed;
and closing any descriptor of a locked file drops the process's lock on it, so this process
never opens (and closes) a lock file of its own owners: it compares inodes first.

The order of operations carries the guarantee. An owner writes its record before it removes
its claim; a claimant creates its claim before it looks for a record. So whoever wins a claim
after an earlier execution finished sees that execution's record, and nobody runs it twice.

A claim names its owner, not the caller: while an owner runs, a duplicate waits for its record,
which is then checked against the duplicate's user and fingerprint. An orphan is taken over by
the first claimant after the owner's death (normally the broker's redelivery of the very
message), which records the request as in doubt under its own user and fingerprint.

Not for folders shared between hosts: `link` exclusivity and `flock` are not dependable over
NFS or similar; use the PostgreSQL store there.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
from collections.abc import Callable

from runtime.claims import Claim, ClaimError, ClaimState, Holder
from runtime.stores.files import quick

CLAIMS_DIR = ".claims"
OWNERS_DIR = ".owners"
_TOKEN = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_RETRIES = 20

# The lock files this process holds, by (device, inode), with their owner tokens.
_OWN: dict[tuple[int, int], str] = {}
_OWN_LOCK = threading.Lock()
# Descriptors that turned out to be on a lock file of this process: closing one would drop
# its lock, so they stay open (only a claim replaced by this process between a look at its
# name and the open lands here; it is rare and small).
_PINNED: list[int] = []


def _forget_in_child() -> None:
    # A forked child holds none of its parent's record locks: it must probe them like anyone.
    _OWN.clear()
    _PINNED.clear()


os.register_at_fork(after_in_child=_forget_in_child)


class FileClaims:
    """Claim links plus owner locks under one records folder."""

    def __init__(self, root: str, owner: str, get_record: Callable[[str], bytes | None]) -> None:
        if not _TOKEN.match(owner):
            raise ClaimError(f"invalid owner token {owner!r}")
        self.owner = owner
        self._get_record = get_record
        self._claims = os.path.join(root, CLAIMS_DIR)
        self._owners = os.path.join(root, OWNERS_DIR)
        self._lock_file = os.path.join(self._owners, owner + ".lock")
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._lock_fd = -1
        self._key = (-1, -1)
        try:
            for folder in (self._claims, self._owners):
                os.makedirs(folder, mode=0o750, exist_ok=True)
            # Locked under a temporary name, then renamed into place: nobody can see the lock
            # file unlocked and tidy it away as a dead owner's.
            tmp = os.path.join(self._owners, f".{owner}.tmp")
            self._lock_fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            os.write(self._lock_fd, owner.encode())
            # Held until the process ends: the kernel releases it however the process dies,
            # and no child inherits it.
            fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            st = os.fstat(self._lock_fd)
            self._key = (st.st_dev, st.st_ino)
            with _OWN_LOCK:
                _OWN[self._key] = owner
            os.rename(tmp, self._lock_file)
        except OSError as exc:
            raise ClaimError(f"cannot set up claims in {root}: {exc.strerror or exc}") from None
        self._remove_dead_owners()

    # -- owners --------------------------------------------------------------------------
    def _remove_dead_owners(self) -> None:
        """Tidy lock files of owners that are gone (their claims keep the inode, still dead)."""
        try:
            entries = list(os.scandir(self._owners))
        except OSError:
            return
        for entry in entries:
            if (
                entry.name.endswith(".lock")
                and not entry.name.startswith(".")
                and entry.path != self._lock_file
                and _probe_quietly(entry.path) is False
            ):
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass

    def live_owners(self) -> set[str]:
        try:
            entries = list(os.scandir(self._owners))
        except OSError:
            return {self.owner}
        live = {self.owner}
        for entry in entries:
            if entry.name.endswith(".lock") and _probe_quietly(entry.path):
                live.add(entry.name.removesuffix(".lock"))
        return live

    # -- claims --------------------------------------------------------------------------
    def _path(self, execution_id: str) -> str:
        return os.path.join(self._claims, execution_id)

    def claim(self, execution_id: str, *, user_id: str, fingerprint: str | None) -> Claim:
        mine = Holder(self.owner, user_id, fingerprint)
        path = self._path(execution_id)
        try:
            for _ in range(_RETRIES):
                try:
                    quick.link(self._lock_file, path, True)
                except FileExistsError:
                    state = self._state_of(execution_id)
                    if state is not None:
                        return state
                    continue  # released between our attempt and our look: try again
                # Look for a record only now: one written before we created the claim is
                # visible, since its owner wrote it before removing its own claim.
                record = self._get_record(execution_id)
                if record is not None:
                    _unlink(path)
                    return Claim(ClaimState.RECORDED, execution_id, record=record)
                return Claim(ClaimState.WON, execution_id, holder=mine)
        except OSError as exc:
            raise ClaimError(f"cannot claim {execution_id}: {exc.strerror or exc}") from None
        raise ClaimError(f"cannot claim {execution_id}: it keeps changing hands")

    def _state_of(self, execution_id: str) -> Claim | None:
        """The claim as it stands, or None if nobody holds it (and there is no record)."""
        record = self._get_record(execution_id)
        if record is not None:
            return Claim(ClaimState.RECORDED, execution_id, record=record)
        owner, alive = self._inspect(self._path(execution_id))
        if owner is None:
            record = self._get_record(execution_id)
            if record is not None:
                return Claim(ClaimState.RECORDED, execution_id, record=record)
            return None
        holder = _unknown_caller(owner)
        if alive:
            return Claim(ClaimState.RUNNING, execution_id, holder=holder)
        # Its owner is dead: one more look, it may have recorded just before it died.
        record = self._get_record(execution_id)
        if record is not None:
            return Claim(ClaimState.RECORDED, execution_id, record=record)
        return Claim(ClaimState.ORPHANED, execution_id, holder=holder)

    def _inspect(self, path: str) -> tuple[str | None, bool]:
        """(owner token, alive) of a claim; (None, False) if there is none."""
        owner, alive = _probe(path)
        return owner, bool(alive)

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
            with self._seq_lock:
                self._seq += 1
                tmp = os.path.join(self._claims, f".{self.owner}.{self._seq}")
            os.link(self._lock_file, tmp)
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
                quick.unlink(self._path(claim.execution_id))
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
                os.unlink(self._lock_file)
            except OSError:
                pass
            with _OWN_LOCK:
                _OWN.pop(self._key, None)
            os.close(self._lock_fd)
            self._lock_fd = -1


def _unknown_caller(owner: str) -> Holder:
    """A running claim's holder: the owner is known, its caller is checked on its record."""
    return Holder(owner, "", None, known=False)


def _own(st: os.stat_result) -> str | None:
    with _OWN_LOCK:
        return _OWN.get((st.st_dev, st.st_ino))


def _probe(path: str) -> tuple[str | None, bool | None]:
    """(owner token, alive) of a lock file or claim link; (None, None) if it is gone."""
    try:
        owner = _own(os.stat(path, follow_symlinks=False))
        if owner is not None:
            return owner, True  # ours: never opened, so never closed
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None, None
    owner = _own(os.fstat(fd))
    if owner is not None:
        # Replaced by one of ours since we looked: closing this would drop our own lock.
        with _OWN_LOCK:
            _PINNED.append(fd)
        return owner, True
    try:
        token = os.read(fd, 256).decode("ascii", "replace")
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:  # EAGAIN or EACCES: another process holds it
            return token, True
        return token, False
    finally:
        os.close(fd)  # also drops the shared lock, if it was granted


def _probe_quietly(path: str) -> bool | None:
    """Whether a lock file is held (None: gone or unreadable)."""
    try:
        return _probe(path)[1]
    except OSError:
        return None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
