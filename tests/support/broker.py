"""The real RabbitMQ on 127.0.0.1:5672: availability (skip locally, fail under CI) and cleanup."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import pika
import pika.exceptions
import pytest

AMQP_URL = os.environ.get("INTENTUS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def broker_up(host: str = "127.0.0.1", port: int = 5672) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require_broker() -> None:
    """Skip without a broker on a laptop; under CI a missing broker is a failure."""
    if broker_up():
        return
    message = (
        "RabbitMQ is not reachable on 127.0.0.1:5672 (bash deploy/local/ensure-broker starts it)"
    )
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def unique(prefix: str = "t") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


def connection(url: str = AMQP_URL) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(url))


def delete_topology(
    queue: str, reply_queue: str | None = None, extra_queues: tuple[str, ...] = ()
) -> None:
    """Remove a test's request queue, its DLQ/DLX and its reply queue (ignoring what is gone)."""
    try:
        conn = connection()
    except pika.exceptions.AMQPError:
        return
    try:
        for name in (queue, f"{queue}.dlq", *([reply_queue] if reply_queue else []), *extra_queues):
            ch = conn.channel()
            try:
                ch.queue_delete(name)
            except pika.exceptions.ChannelClosedByBroker:
                continue
        ch = conn.channel()
        try:
            ch.exchange_delete(f"{queue}.dlx")
        except pika.exceptions.ChannelClosedByBroker:
            pass
    finally:
        conn.close()


def get_all(queue: str, limit: int = 10_000) -> list[tuple[Any, Any, bytes]]:
    """Drain up to `limit` messages from a queue (acking them): (method, properties, body)."""
    out = []
    conn = connection()
    try:
        ch = conn.channel()
        for _ in range(limit):
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                break
            out.append((method, props, body))
    finally:
        conn.close()
    return out


def queue_depth(queue: str) -> int:
    conn = connection()
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        conn.close()
