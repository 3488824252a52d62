"""Short file system calls made without letting go of the interpreter lock.

Every `os` call lets go of the interpreter lock and takes it back afterwards. For a call that
takes a few microseconds (a link, an unlink, a failed open) that is a loss when the worker's
threads are busy: the next thread takes the lock, and the caller waits for it to let go again
(up to the switch interval) and pays a futex wake and a context switch on each side. A request
makes about eight such calls on the files store (claim, look for a record, new file, write,
link, close, release), so at a few thousand requests a second the hand-overs cost more CPU
than the calls themselves.

Here the same calls go through the C library with the lock held (`ctypes.PyDLL`). Only calls
that return without waiting for the disk or the inode allocator belong here: the syncs
(`syncfs`, `fsync`) still let go, and so do making a new file and writing its bytes, which the
committer does with `os` (on a file system without a journal a new inode can take milliseconds
to find while recently freed ones are scanned, and a write may wait while the kernel throttles
dirty pages: no other thread of the worker should stand still meanwhile). They raise
`OSError` (its subclasses, by errno) as `os` does. Where the C library cannot be
loaded this way (not Linux), the `os` functions are used as they are.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

AT_FDCWD = -100
AT_SYMLINK_FOLLOW = 0x400


def _error(path: str | None = None) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err), path)


def _load() -> tuple[
    Callable[[str, int, int], int],
    Callable[[str, str, bool], None],
    Callable[[str], None],
    Callable[[int], None],
]:
    """(open, link, unlink, close), keeping the lock where the platform allows."""
    try:
        libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the interpreter lock stays held
        c_open, c_linkat, c_unlink, c_close = libc.open, libc.linkat, libc.unlink, libc.close
    except (AttributeError, OSError):
        return _os_open, _os_link, os.unlink, os.close
    c_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint]
    c_open.restype = ctypes.c_int
    c_linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    c_linkat.restype = ctypes.c_int
    c_unlink.argtypes = [ctypes.c_char_p]
    c_unlink.restype = ctypes.c_int
    c_close.argtypes = [ctypes.c_int]
    c_close.restype = ctypes.c_int

    def open_(path: str, flags: int, mode: int) -> int:
        fd = int(c_open(os.fsencode(path), flags | os.O_CLOEXEC, mode))
        if fd < 0:
            raise _error(path)
        return fd

    def link(src: str, dst: str, follow: bool) -> None:
        flags = AT_SYMLINK_FOLLOW if follow else 0
        if c_linkat(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) != 0:
            raise _error(dst)

    def unlink(path: str) -> None:
        if c_unlink(os.fsencode(path)) != 0:
            raise _error(path)

    def close(fd: int) -> None:
        if c_close(fd) != 0 and ctypes.get_errno() != 4:  # EINTR: closed all the same
            raise _error()

    return open_, link, unlink, close


def _os_open(path: str, flags: int, mode: int) -> int:
    return os.open(path, flags | os.O_CLOEXEC, mode)


def _os_link(src: str, dst: str, follow: bool) -> None:
    os.link(src, dst, follow_symlinks=follow)


open_fd, link, unlink, close = _load()
