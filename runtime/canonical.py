"""Canonical JSON, hashes and the ids derived from them.

Everything hashed or compared goes through `canonical_json`; everything sent or stored goes
through `dumps`, which keeps key order so that a stored response re-serialises byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

# The C accelerator the stdlib's JSONEncoder uses (None without it); not in the type stubs.
c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)

_py_canonical = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
_py_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _make_c(py: json.JSONEncoder) -> Callable[[], Callable[[Any, int], Any]] | None:
    """A factory of C encoders with `py`'s settings, bypassing `JSONEncoder.encode`.

    The Python wrapper costs more than encoding a small object with the C encoder. Each
    encoding gets a fresh encoder (cheap) because its circular-reference table must not be
    shared between threads or kept after an error, as `JSONEncoder.iterencode` ensures too."""
    if c_make_encoder is None:  # pragma: no cover - CPython always has it
        return None
    encode_str = json.encoder.encode_basestring  # ensure_ascii=False
    default = py.default

    def make() -> Callable[[Any, int], Any]:
        return c_make_encoder({}, default, encode_str, None, ":", ",", py.sort_keys, False, False)

    return make


_c_canonical = _make_c(_py_canonical)
_c_compact = _make_c(_py_compact)


def _encoder(py: json.JSONEncoder, make: Callable[[], Any] | None) -> Callable[[Any], str]:
    if make is None:  # pragma: no cover
        return py.encode

    def encode(value: Any) -> str:
        if isinstance(value, str):
            return py.encode(value)
        return "".join(make()(value, 0))

    return encode


_canonical = _encoder(_py_canonical, _c_canonical)
_compact = _encoder(_py_compact, _c_compact)


def _shared(py: json.JSONEncoder) -> Callable[[Any], str]:
    """One encoder with `py`'s settings and no circular-reference check, shared by all threads
    (without the check it keeps no state between encodings)."""
    if c_make_encoder is None:  # pragma: no cover - CPython always has it
        return py.encode
    encode = c_make_encoder(
        None, py.default, json.encoder.encode_basestring, None, ":", ",", py.sort_keys, False, False
    )

    def text(value: Any) -> str:
        if isinstance(value, str):
            return py.encode(value)
        chunks = encode(value, 0)
        return chunks[0] if len(chunks) == 1 else "".join(chunks)

    return text


#: Compact and canonical JSON text of a value that holds no cycle, such as one decoded from
#: JSON or built by the runtime (a cycle would fail with RecursionError, not ValueError). Same
#: text as `dumps` and `canonical_json`, without the cost of a new encoder each time.
compact_text = _shared(_py_compact)
canonical_text = _shared(_py_canonical)
#: A JSON string literal (`ensure_ascii=False`), exactly as the encoders above write one.
string_text: Callable[[str], str] = json.encoder.encode_basestring
_INFINITY = float("inf")


def float_text(value: float) -> str:
    """A float as the stdlib encoder writes it (`allow_nan=False`)."""
    if value != value or value in (_INFINITY, -_INFINITY):
        return compact_text(value)  # raises the encoder's own ValueError
    return float.__repr__(value)


def value_text(value: Any) -> str:
    """Any JSON value, strings (the usual case) the fastest."""
    return string_text(value) if type(value) is str else compact_text(value)


def optional_text(value: Any) -> str:
    return "null" if value is None else value_text(value)


def names_text(names: list[str]) -> str:
    """A list of strings."""
    return "[" + ",".join(map(string_text, names)) + "]" if names else "[]"


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


# Rejection ids hash a preimage starting with 0xFF, a byte that never occurs in UTF-8: no
# requestId's executionId (sha256 of its UTF-8 bytes) can ever equal a rejection id.
_REJECTION_DOMAIN = b"\xffintentus:rejected:"


def rejection_id_for(body: bytes) -> str:
    """Where a message rejected before routing is recorded: derived from its raw body (so
    its redeliveries find it), never from its requestId (which it does not consume)."""
    return rejection_id_for_digest(hashlib.sha256(body).hexdigest())


def rejection_id_for_digest(raw_body_sha256: str) -> str:
    """The rejection id from the body's sha256 hex digest (a record's `rawBodySha256`)."""
    inner = bytes.fromhex(raw_body_sha256)
    return "exec-" + sha256_hex(_REJECTION_DOMAIN + inner)[:24]


def request_id_for_body(body: bytes) -> str:
    return "req-" + sha256_hex(body)[:24]


def trace_id_for(request_id: str) -> str:
    """A W3C-sized trace id derived from the request, so a redelivery keeps its trace."""
    return sha256_hex(b"trace:" + request_id.encode("utf-8"))[:32]


def encode_envelope(normalised_envelope: dict[str, Any]) -> tuple[bytes, str, str]:
    """The envelope's canonical JSON, its hash and its fingerprint, from one encoding of each
    part (a canonical object is its sorted members joined, so the whole is assembled from the
    parts and the fingerprint from three of them). The record embeds these same bytes."""
    encode = _c_canonical() if _c_canonical is not None else None
    if encode is None:  # pragma: no cover
        parts = {k: _canonical(v) for k, v in normalised_envelope.items()}
    else:
        parts = {k: "".join(encode(v, 0)) for k, v in normalised_envelope.items()}
    whole = ("{" + ",".join(f'"{k}":{parts[k]}' for k in sorted(parts)) + "}").encode("utf-8")
    fp = '{{"intent":{},"payload":{},"routing":{}}}'.format(
        parts["intent"],
        parts["payload"],
        parts["routing"],
    )
    return (
        whole,
        "sha256:" + sha256_hex(whole),
        "sha256:" + sha256_hex(fp.encode("utf-8")),
    )
