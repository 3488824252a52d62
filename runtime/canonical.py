"""Canonical JSON, hashes and the ids derived from them.

Everything hashed or compared goes through `canonical_json`; everything sent or stored goes
through `dumps`, which keeps key order so that a stored response re-serialises byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

_canonical = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def canonical_json(value: Any) -> bytes:
    """Sorted keys, `(",", ":")` separators, UTF-8: the form every hash is taken over."""
    return _canonical(value).encode("utf-8")


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON in insertion order (wire bodies and record files)."""
    return _compact(value).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def envelope_hash(normalised_envelope: dict[str, Any]) -> str:
    return "sha256:" + sha256_hex(canonical_json(normalised_envelope))


def execution_id_for(request_id: str) -> str:
    """`exec-` + 24 hex digits of sha256(requestId): no path ever comes from content."""
    return "exec-" + sha256_hex(request_id.encode("utf-8"))[:24]


def request_id_for_body(body: bytes) -> str:
    return "req-" + sha256_hex(body)[:24]


def trace_id_for(request_id: str) -> str:
    """A W3C-sized trace id derived from the request, so a redelivery keeps its trace."""
    return sha256_hex(b"trace:" + request_id.encode("utf-8"))[:32]


def envelope_hash_and_fingerprint(normalised_envelope: dict[str, Any]) -> tuple[str, str]:
    """Both hashes from one canonical encoding of each part (the same bytes as encoding the
    whole: a canonical object is its sorted members joined)."""
    parts = {k: _canonical(v) for k, v in normalised_envelope.items()}
    whole = "{" + ",".join(f'"{k}":{parts[k]}' for k in sorted(parts)) + "}"
    fp = '{{"intent":{},"payload":{},"routing":{}}}'.format(
        parts["intent"],
        parts["payload"],
        parts["routing"],
    )
    return (
        "sha256:" + sha256_hex(whole.encode("utf-8")),
        "sha256:" + sha256_hex(fp.encode("utf-8")),
    )
