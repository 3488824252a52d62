"""Connections a forked child must not keep open for its parent.

An agent may fork (os.fork, multiprocessing's fork start method). The child gets a copy of
every descriptor, and a copy keeps the other end's view of the parent unchanged: after a
SIGKILL of the worker, the broker would go on delivering to its consumer and the database
would keep its liveness session (and its advisory lock) for as long as the child lives. So the
worker names the descriptors that stand for it (broker socket, database sessions, HTTP
listener), and in a forked child each is pointed at /dev/null: the parent's copy is untouched,
the child's end is gone, and the objects the child inherited close /dev/null, never a number
the child has reused meanwhile. Children started with exec do not inherit them at all (they
are close-on-exec).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

_sources: list[tuple[weakref.ref[Any], Callable[[Any], Iterable[int]]]] = []
_lock = threading.Lock()


def detach_in_children(owner: object, descriptors: Callable[[Any], Iterable[int]]) -> None:
    """In a forked child, point `descriptors(owner)` at /dev/null (as long as `owner` lives)."""
    with _lock:
        _sources[:] = [(ref, fn) for ref, fn in _sources if ref() is not None]
        _sources.append((weakref.ref(owner), descriptors))


def _after_in_child() -> None:
    sources = list(_sources)
    _sources.clear()
    try:
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return
    try:
        for ref, descriptors in sources:
            owner = ref()
            if owner is None:
                continue
            try:
                fds = [fd for fd in descriptors(owner) if fd >= 0 and fd != null]
            except Exception:
                continue  # a half-closed object: nothing of it to detach
            for fd in fds:
                try:
                    os.dup2(null, fd, inheritable=False)
                except OSError:
                    pass
    finally:
        os.close(null)


os.register_at_fork(after_in_child=_after_in_child)


def fileno_of(obj: Any, *path: str) -> list[int]:
    """The descriptor at the end of an attribute path (e.g. a library's private socket), or
    none if any step is missing: what is not there cannot leak."""
    for name in path:
        obj = getattr(obj, name, None)
        if obj is None:
            return []
    try:
        fd = obj.fileno() if callable(getattr(obj, "fileno", None)) else obj
    except (OSError, ValueError):
        return []
    return [fd] if isinstance(fd, int) and fd >= 0 else []
