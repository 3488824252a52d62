"""OneShot: the first value wins; waiters see it."""

from __future__ import annotations

import threading

from runtime.oneshot import OneShot


def test_first_set_wins_and_wakes_a_waiter() -> None:
    """A second set is ignored; a waiter in another thread returns once it is set."""
    shot: OneShot[int] = OneShot()
    assert not shot.wait(0.01)
    threading.Timer(0.01, shot.set, args=(1,)).start()
    assert shot.wait(5)
    shot.set(2)
    assert (shot.is_set(), shot.value) == (True, 1)
