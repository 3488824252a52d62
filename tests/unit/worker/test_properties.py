"""Reading AMQP properties at the transport boundary: text or nothing, and why not."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pika
import pytest

from runtime.errors import ErrorCode
from worker.amqp.properties import clean_headers, delivery_of, text_property

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def method(**kw: Any) -> Any:
    return SimpleNamespace(
        delivery_tag=kw.get("tag", 7),
        redelivered=kw.get("redelivered", False),
        exchange=kw.get("exchange", ""),
        routing_key=kw.get("routing_key", "q"),
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [(b"\xff", "not valid UTF-8"), ("a\x00b", "NUL"), (bytearray(b"\x80"), "not valid UTF-8")],
)
def test_unusable_text_is_dropped_with_a_protocol_error(value: Any, problem: str) -> None:
    text, error = text_property("correlation_id", value)
    assert text is None
    assert error is not None and error.code is ErrorCode.PROTOCOL_ERROR
    assert problem in error.message and "correlation_id" in error.message
    assert error.field == "correlation_id"


@pytest.mark.parametrize("value", [None, "", "c" * 255, "é" * 127, "tab\there"])
def test_usable_text_is_kept(value: str | None) -> None:
    assert text_property("message_id", value) == (value, None)


def test_delivery_carries_text_only_and_the_first_refusal() -> None:
    props = pika.BasicProperties(
        correlation_id=b"\xfe", message_id="m\x00", reply_to="rq", user_id="guest"
    )
    d = delivery_of(method(), props, b"{}", generation=3)
    assert (d.correlation_id, d.message_id, d.reply_to, d.user_id) == (None, None, "rq", "guest")
    assert d.refusal is not None and d.refusal.field == "correlation_id"
    assert (d.tag, d.generation, d.routing_key) == (7, 3, "q")
    assert d.properties is props  # the dead-letter copy keeps the original bytes


def test_a_clean_delivery_has_no_refusal() -> None:
    props = pika.BasicProperties(correlation_id="c", content_type="application/json")
    d = delivery_of(method(redelivered=True), props, b"{}", generation=1)
    assert d.refusal is None and d.redelivered and d.content_type == "application/json"


@pytest.mark.parametrize(
    ("headers", "traceparent", "count"),
    [
        ({"traceparent": TRACEPARENT, "x-delivery-count": 2}, TRACEPARENT, 2),
        ({"traceparent": TRACEPARENT.upper().encode()}, TRACEPARENT, 0),
        ({"traceparent": b"\xff\xfe"}, None, 0),
        ({"traceparent": 42, "x-delivery-count": True}, None, 0),
        ({"traceparent": {"a": 1}, "x-delivery-count": "5"}, None, 0),
        ({"traceparent": "00-\x00", "x-delivery-count": -1}, None, 0),
        ({"x-delivery-count": [1]}, None, 0),
        (None, None, 0),
    ],
)
def test_odd_headers_are_ignored(headers: Any, traceparent: str | None, count: int) -> None:
    cleaned = clean_headers(headers)
    d = delivery_of(method(), pika.BasicProperties(headers=headers), b"", generation=0)
    assert cleaned.get("traceparent") == traceparent == d.traceparent
    assert d.delivery_count == count
    assert d.refusal is None


def test_other_headers_are_kept_as_they_are() -> None:
    assert clean_headers({"x-custom": b"\xff", "n": 1}) == {"x-custom": b"\xff", "n": 1}
