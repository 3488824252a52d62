"""The queues and exchanges: checked at start and after each reconnect."""

from __future__ import annotations

import logging
from typing import Any

import pika
import pika.exceptions

from worker.amqp.connect import connect_blocking
from worker.config import Config
from worker.errors import BrokerUnavailable, TopologyConflict

log = logging.getLogger("intentus.amqp")


def queue_arguments(cfg: Config) -> dict[str, Any]:
    """The request queue's arguments (a queue found with others is a conflict)."""
    arguments: dict[str, Any] = {"x-queue-type": cfg.queue_type, "x-dead-letter-exchange": cfg.dlx}
    if cfg.queue_type == "quorum":
        arguments["x-delivery-limit"] = cfg.delivery_limit
    elif cfg.queue_max_priority:
        arguments["x-max-priority"] = cfg.queue_max_priority
    return arguments


def _broker_version(conn: pika.BlockingConnection) -> str:
    properties = getattr(getattr(conn, "_impl", None), "server_properties", None) or {}
    version = properties.get("version", "unknown")
    return version.decode() if isinstance(version, bytes) else str(version)


def _exists(conn: pika.BlockingConnection, kind: str, name: str) -> bool:
    """Passive declare on a throwaway channel (a 404 closes the channel, not the connection)."""
    channel = conn.channel()
    try:
        if kind == "queue":
            channel.queue_declare(name, passive=True)
        else:
            channel.exchange_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return False
        raise
    channel.close()
    return True


def _declare_request_queue(conn: pika.BlockingConnection, cfg: Config) -> None:
    try:
        conn.channel().queue_declare(cfg.queue, durable=True, arguments=queue_arguments(cfg))
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 406:
            raise TopologyConflict(
                f"queue {cfg.queue!r} already exists with other arguments than "
                f"{queue_arguments(cfg)} (durable): {exc.reply_text}. Delete it, or set "
                "INTENTUS_QUEUE/INTENTUS_QUEUE_TYPE to match."
            ) from exc
        raise


def declare_topology(cfg: Config) -> None:
    """Request queue (strict: other arguments are a conflict), its dead-letter exchange and
    queue, and the default reply queue (each of those used as found if it already exists)."""
    conn = connect_blocking(cfg.amqp_url, f"intentus-worker {cfg.worker_id} (topology)")
    if cfg.queue_max_priority and cfg.queue_type == "quorum":
        # RabbitMQ refuses x-max-priority on quorum queues (3.x and 4.x alike).
        log.warning(
            "INTENTUS_QUEUE_MAX_PRIORITY=%d ignored: quorum queues take no x-max-priority; "
            "RabbitMQ before 4.0 (this broker: %s) delivers them in publish order whatever "
            "the priority, 4.0 and later put AMQP priority 5 and above first. "
            "Use INTENTUS_QUEUE_TYPE=classic for priorities.",
            cfg.queue_max_priority,
            _broker_version(conn),
        )
    try:
        if not _exists(conn, "exchange", cfg.dlx):
            conn.channel().exchange_declare(cfg.dlx, exchange_type="fanout", durable=True)
        if not _exists(conn, "queue", cfg.dlq):
            channel = conn.channel()
            channel.queue_declare(cfg.dlq, durable=True, arguments={"x-queue-type": cfg.queue_type})
        conn.channel().queue_bind(cfg.dlq, cfg.dlx, routing_key="#")
        if cfg.reply_queue and not _exists(conn, "queue", cfg.reply_queue):
            conn.channel().queue_declare(cfg.reply_queue, durable=True)
        _declare_request_queue(conn, cfg)
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise TopologyConflict(
            f"broker refused the topology: {exc.reply_code} {exc.reply_text}"
        ) from exc
    except pika.exceptions.AMQPError as exc:
        raise BrokerUnavailable(
            f"broker connection failed while declaring topology: {exc!r}"
        ) from exc
    finally:
        try:
            conn.close()
        except Exception:
            pass
