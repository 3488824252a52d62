"""A delivery's AMQP properties, read once, at the transport boundary.

pika hands over a short string that is not UTF-8 as bytes, and header values of whatever type
the publisher chose. Everything past this module sees text or nothing: an id that cannot be
used as text (not UTF-8, or bearing NUL, which no store, log or reply can carry faithfully) is
dropped and the delivery carries a `PROTOCOL_ERROR` for it, so the runtime refuses the message
before routing (an error reply, a record, a dead letter; never an agent run). Odd header values
the worker only reads for information (`traceparent`, `x-delivery-count`) are ignored when
malformed, as W3C Trace Context asks of a traceparent.
"""

from __future__ import annotations

from typing import Any

import pika

from runtime.errors import EnvelopeError, ErrorCode
from worker.intents import check_traceparent
from worker.transport import Delivery

#: The properties the worker reads as text, in the order their faults are reported.
TEXT_PROPERTIES = ("correlation_id", "message_id", "reply_to", "user_id", "content_type")


def text_property(name: str, value: Any) -> tuple[str | None, EnvelopeError | None]:
    """(the property as text or None, why it cannot be used)."""
    if value is None:
        return None, None
    if isinstance(value, (bytes, bytearray)):
        return None, EnvelopeError(
            ErrorCode.PROTOCOL_ERROR, f"AMQP property {name} is not valid UTF-8", name
        )
    if not isinstance(value, str):  # pragma: no cover - pika decodes short strings only
        return None, EnvelopeError(
            ErrorCode.PROTOCOL_ERROR, f"AMQP property {name} is not a string", name
        )
    if "\x00" in value:
        return None, EnvelopeError(
            ErrorCode.PROTOCOL_ERROR, f"AMQP property {name} contains a NUL character", name
        )
    return value, None


def clean_headers(headers: dict[str, Any] | None) -> dict[str, Any]:
    """The headers with `traceparent` and `x-delivery-count` well-formed, or left out."""
    out = dict(headers or {})
    traceparent = out.pop("traceparent", None)
    if isinstance(traceparent, bytes):
        try:
            traceparent = traceparent.decode("ascii")
        except UnicodeDecodeError:
            traceparent = None
    if isinstance(traceparent, str):
        try:
            out["traceparent"] = check_traceparent(traceparent)
        except ValueError:
            pass
    count = out.pop("x-delivery-count", None)
    # bool is an int to Python, not a count to anyone.
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        out["x-delivery-count"] = count
    return out


def delivery_of(
    method: Any, properties: pika.BasicProperties, body: bytes, *, generation: int
) -> Delivery:
    """The transport-neutral delivery; `refusal` set when a property cannot be used."""
    texts: dict[str, str | None] = {}
    refusal: EnvelopeError | None = None
    for name in TEXT_PROPERTIES:
        texts[name], problem = text_property(name, getattr(properties, name, None))
        refusal = refusal or problem
    exchange, _ = text_property("exchange", method.exchange)
    routing_key, _ = text_property("routing_key", method.routing_key)
    return Delivery(
        body=body,
        tag=method.delivery_tag,
        generation=generation,
        redelivered=bool(method.redelivered),
        reply_to=texts["reply_to"],
        correlation_id=texts["correlation_id"],
        message_id=texts["message_id"],
        user_id=texts["user_id"],
        content_type=texts["content_type"],
        headers=clean_headers(properties.headers),
        exchange=exchange or "",
        routing_key=routing_key or "",
        properties=properties,
        refusal=refusal,
    )
