"""Intake: a body validated straight from its bytes is accepted or refused exactly as the
stdlib decoder and model validation (`read`) accept or refuse it."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

import pytest

from runtime.canonical import encode_envelope
from runtime.envelope import Arrival, RequestContext
from runtime.errors import EnvelopeError, ErrorCode
from runtime.intake import Refused, Request, accept, encode_read_envelope, read

from .test_golden_records import scenarios

VALID: list[bytes] = [
    b'{"version":"1.0","intent":{"name":"I"}}',
    b'{"version":"1.0","intent":{"name":"I","version":"2"},"payload":{"b":1,"a":[1.5,null]}}',
    json.dumps(
        {
            "version": "1.0",
            "intent": {"name": "ü"},
            "payload": {"z": {"y": "é\u2028\x00"}, "n": -(2**70), "f": 0.1, "e": 1e16},
            "context": {
                "sourceAgent": "s",
                "timestamp": "2024-02-01T00:00:00+01:00",
                "priority": "low",
                "tags": ["a", "ü"],
            },
            "metadata": {
                "requestId": "r",
                "source": "x",
                "createdAt": "2024-02-01T00:00:00Z",
                "traceId": "t",
                "identityChain": ["p", "q"],
            },
            "routing": {"strategy": "fallback", "targetAgent": "a", "fallbackAgents": ["b"]},
        },
        ensure_ascii=False,
    ).encode(),
    b'{"version":"1.0","intent":{"name":"I"},"payload":{"x":' + b"[" * 62 + b"]" * 62 + b"}}",
    b'{"version":"1.0","intent":{"name":"I"},"payload":{"x":"\\ud83d\\ude00","y":1E5}}',
    b'{"version":"1.0","intent":{"name":"I"},"payload":{"a":1,"a":2},"intent":{"name":"J"}}',
]
INVALID: list[bytes] = [
    b'{"version":"1.0","intent":{"name":"I"},"payload":{"x":' + b"[" * 63 + b"]" * 63 + b"}}",
    b'{"version":"1.0","intent":{"name":"I"},"payload":{"x":NaN}}',
    b'{"version":"1.0","intent":{"name":"I"},"payload":{"x":-Infinity}}',
    b'{"version":"1.0","intent":{"name":"I"},"payload":{"x":1e999}}',
    b'{"version":"1.0","intent":{"name":"I"},"payload":{"x":' + b"7" * 4301 + b"}}",
    b'{"version":"1.0","intent":{"name":"I"},"payload":{"x":"\\udfff"}}',
    b'{"version":"1.0","intent":{"name":"I"},"payload":{"x":"\\ud800\\u0041"}}',
    b'{"version":"1.0","intent":{"name":"I"},"payload":{"x":"\xc0\x80"}}',
    b'{"version":"1.0","intent":{"name":"I"},"payload":{"x":"\xf4\x90\x80\x80"}}',
    b'{"version":"1.0","intent":{"name":"I"},"payload":{"x":"\xed\xa0\x80"}}',
    b'{"version":"1.0","intent":{"name":"I"},"payload":{"x":+1}}',
    b'{"version":"1.0","intent":{"name":"I"},"payload":{"x":1e}}',
    b'{"version":"1.0","intent":{"name":"I"},"payload":{"x":"\t"}}',
    b'{"version":"1.0","intent":{"name":"I"}}\x00',
    b'\x0c{"version":"1.0","intent":{"name":"I"}}',
    b'{"version":"1.0","intent":{"name":"I"},"routing":{"strategy":"PARALLEL","targetAgent":"a"}}',
]


def arrival(context: RequestContext | None = None) -> Arrival:
    received = datetime(2024, 1, 15, 10, 30, 0, 123456, tzinfo=UTC)
    return Arrival(context or RequestContext(), received, 5.0, None)


def slow(body: Any, context: RequestContext | None = None, **kwargs: Any) -> Any:
    """What `read` makes of it: the request, or the refusal's code and message."""
    kwargs.setdefault("content_type", None)
    kwargs.setdefault("max_message_bytes", 1 << 20)
    try:
        envelope, raw = read(body, arrival(context), **kwargs)
    except Refused as refused:
        return refused.error.code, refused.error.message
    return Request.of(envelope, arrival(context), raw)


def fast(body: Any, context: RequestContext | None = None, **kwargs: Any) -> Any:
    kwargs.setdefault("content_type", None)
    kwargs.setdefault("max_message_bytes", 1 << 20)
    try:
        return accept(body, arrival(context), **kwargs)
    except Refused as refused:
        return refused.error.code, refused.error.message


def same(body: Any, **kwargs: Any) -> None:
    expected, got = slow(body, **kwargs), fast(body, **kwargs)
    if isinstance(expected, Request):
        assert isinstance(got, Request), (body, got)
        assert got.envelope.model_dump() == expected.envelope.model_dump()
        assert got.envelope.model_fields_set == expected.envelope.model_fields_set
        assert list(got.envelope.payload) == list(expected.envelope.payload)
        for name in ("body", "envelope_json", "envelope_hash", "fingerprint", "execution_id"):
            assert getattr(got, name) == getattr(expected, name), name
        assert json.dumps(got.envelope_dict) == json.dumps(expected.envelope.to_dict())
        assert (got.request_id, got.trace_id, got.intent, got.strategy) == (
            expected.request_id,
            expected.trace_id,
            expected.intent,
            expected.strategy,
        )
    else:
        assert got == expected, body


def golden_bodies() -> list[Any]:
    """Every request the golden scenarios send, with its context and options."""
    import runtime.engine

    seen: list[Any] = []
    original = runtime.engine.accept

    def spy(request: Any, arrival: Arrival, **kwargs: Any) -> Request:
        seen.append((request, arrival.context, kwargs))
        return original(request, arrival, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtime.engine, "accept", spy)
        for _, run in scenarios():
            run()
    return seen


@pytest.mark.parametrize("body", VALID + INVALID)
def test_same_request_or_refusal(body: bytes) -> None:
    same(body)
    expected = slow(body)
    assert isinstance(expected, Request) == (body in VALID)


def test_golden_bodies() -> None:
    """Every request of the golden scenarios, with its context and content type."""
    for request, context, kwargs in golden_bodies():
        same(request, context=context, **kwargs)


def test_transport_refusal_and_content_type() -> None:
    body = VALID[1]
    same(body, context=RequestContext(refusal=EnvelopeError(ErrorCode.PROTOCOL_ERROR, "bad id")))
    same(body, content_type="text/plain")
    same(body, content_type="application/json; charset=utf-8")
    same(body, max_message_bytes=10)
    same(body.decode())
    same(json.loads(body))


def test_mutated_bodies() -> None:
    """Bodies with bytes changed, dropped or doubled: accepted or refused alike."""
    rng = random.Random(7)
    alphabet = b'{}[]",:0123456789.eE+-tfnul\\ \t\n\xc3\xa9\x00\x1f'
    for base in VALID:
        for _ in range(400):
            data = bytearray(base)
            for _ in range(rng.randint(1, 3)):
                at = rng.randrange(len(data))
                op = rng.random()
                if op < 0.4:
                    data[at] = rng.choice(alphabet)
                elif op < 0.7:
                    del data[at]
                else:
                    data.insert(at, rng.choice(alphabet))
            same(bytes(data))


def test_encoded_from_fields_as_from_dict() -> None:
    for body in VALID:
        request = fast(body)
        assert isinstance(request, Request)
        assert encode_read_envelope(request.envelope) == encode_envelope(request.envelope.to_dict())
