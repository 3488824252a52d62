"""Records folders of finished contenders, removed when the benchmark ends.

Removing a contender's records right after it ran would tax the next file contender: ext4
without a journal does not reuse an inode freed in the last minute or so, and every new file
in that block group scans past each of them again (hundreds of µs per record after a few
thousand were removed). So finished folders are kept until the run is over.
"""

from __future__ import annotations

import atexit
import shutil
from pathlib import Path

_SPENT: list[Path] = []


def remove_later(folder: Path) -> None:
    """Remove `folder` (and everything in it) when this process exits."""
    if not _SPENT:
        atexit.register(remove_now)
    _SPENT.append(folder)


def remove_now() -> None:
    while _SPENT:
        shutil.rmtree(_SPENT.pop(), ignore_errors=True)
