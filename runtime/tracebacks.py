"""What an agent's crash leaves in its record: a short, reproducible form of the traceback.

Records are compared and replayed across machines, so the form holds no absolute paths, no
memory addresses and nothing unbounded: the exception type, its message and the innermost
frames as `file:line in function`.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from typing import Any

MAX_FRAMES = 8
MAX_MESSAGE_CHARS = 500
MAX_FRAME_CHARS = 200

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{4,}")


def _scrub(text: str, limit: int) -> str:
    text = _ADDRESS.sub("0x…", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short_path(filename: str) -> str:
    """The path below the import root it was loaded from (`mypkg/agents.py`), else its name."""
    path = os.path.abspath(filename)
    best = ""
    for entry in sys.path:
        root = os.path.abspath(entry or os.curdir)
        if path.startswith(root + os.sep) and len(root) > len(best):
            best = root
    return os.path.relpath(path, best) if best else os.path.basename(path)


def summarise(exc: BaseException, skip: int = 0) -> dict[str, Any]:
    """`{"type", "message", "frames", "omittedFrames"}`; `skip` drops the caller's own frames."""
    frames = traceback.extract_tb(exc.__traceback__)[skip:]
    kept = frames[-MAX_FRAMES:]
    return {
        "type": type(exc).__name__,
        "message": _scrub(str(exc), MAX_MESSAGE_CHARS),
        "frames": [
            _scrub(f"{_short_path(f.filename)}:{f.lineno} in {f.name}", MAX_FRAME_CHARS)
            for f in kept
        ],
        "omittedFrames": len(frames) - len(kept),
    }


def request_ids(envelope: Any) -> dict[str, Any]:
    """The request and trace ids of an envelope, as log extras (empty when it has none)."""
    metadata = getattr(envelope, "metadata", None)
    return {
        "request_id": getattr(metadata, "requestId", None),
        "trace_id": getattr(metadata, "traceId", None),
    }
