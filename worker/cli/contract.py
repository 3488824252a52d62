"""`intentus contract`: the AsyncAPI 3.0 description of the worker's messages and queues.

Built from the pydantic models (`IntentEnvelope`, `AgentResponse`) and the configured
topology, so it cannot drift from the code; `docs/asyncapi.yaml` is its output for the
default configuration. The YAML is written here (block style, strings quoted as JSON where
needed), so the command needs no YAML library.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel

from runtime.envelope import IntentEnvelope
from runtime.response import AgentResponse
from runtime.version import __version__
from worker import config as configuration
from worker.amqp import queue_arguments
from worker.config import Config
from worker.errors import EXIT_OK

AMQP_BINDING = "0.3.0"
_REF = "#/components/schemas/{model}"


def _schemas(*models: type[BaseModel]) -> dict[str, Any]:
    """Each model's JSON schema, with its nested models hoisted into components.schemas."""
    out: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF, mode="serialization")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return dict(sorted(out.items()))


def _header(description: str, **schema: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **schema}


_TRACEPARENT = _header(
    "W3C trace context of the caller; passed through to the reply "
    "(and continued by the worker's spans when tracing is on)",
    pattern="^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
)


def _queue_binding(name: str, vhost: str) -> dict[str, Any]:
    return {
        "amqp": {
            "is": "queue",
            "queue": {
                "name": name,
                "durable": True,
                "exclusive": False,
                "autoDelete": False,
                "vhost": vhost,
            },
            "bindingVersion": AMQP_BINDING,
        }
    }


def _message_binding(message_type: str | None = None) -> dict[str, Any]:
    amqp: dict[str, Any] = {"bindingVersion": AMQP_BINDING}
    if message_type:
        amqp["messageType"] = message_type
    return {"amqp": amqp}


def build(cfg: Config) -> dict[str, Any]:
    """The AsyncAPI 3.0 document for this configuration."""
    url = urlsplit(cfg.amqp_url)
    host = url.hostname or "localhost"
    port = url.port or (5671 if url.scheme == "amqps" else 5672)
    vhost = unquote(url.path[1:]) or "/"
    correlation = {
        "description": "AMQP property correlation_id; the reply carries the request's "
        "(else its requestId)",
        "location": "$message.header#/correlation_id",
    }
    request_args = queue_arguments(cfg)
    channels: dict[str, Any] = {
        "requests": {
            "address": cfg.queue,
            "title": "Request queue",
            "description": (
                f"Durable {cfg.queue_type} queue consumed by every worker (competing "
                f"consumers). Arguments: {json.dumps(request_args, sort_keys=True)}."
            ),
            "messages": {"intentEnvelope": {"$ref": "#/components/messages/IntentEnvelope"}},
            "bindings": _queue_binding(cfg.queue, vhost),
        },
        "replies": {
            "address": None,
            "title": "Reply destination",
            "description": (
                "The request's reply_to queue, published to through the default exchange. "
                + (
                    f"Without reply_to, the durable default reply queue {cfg.reply_queue!r}."
                    if cfg.reply_queue
                    else "Without reply_to no reply is sent (no default reply queue)."
                )
            ),
            "messages": {"agentResponse": {"$ref": "#/components/messages/AgentResponse"}},
        },
        "deadLetterExchange": {
            "address": cfg.dlx,
            "title": "Dead-letter exchange",
            "description": "Durable fanout exchange; the request queue's x-dead-letter-exchange.",
            "messages": {"deadLetter": {"$ref": "#/components/messages/DeadLetter"}},
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {
                        "name": cfg.dlx,
                        "type": "fanout",
                        "durable": True,
                        "autoDelete": False,
                    },
                    "bindingVersion": AMQP_BINDING,
                }
            },
        },
        "deadLetters": {
            "address": cfg.dlq,
            "title": "Dead-letter queue",
            "description": (
                f"Durable {cfg.queue_type} queue bound to {cfg.dlx}: rejected input (copied by "
                "the worker) and messages the broker dead-lettered (delivery limit)."
            ),
            "messages": {"deadLetter": {"$ref": "#/components/messages/DeadLetter"}},
            "bindings": _queue_binding(cfg.dlq, vhost),
        },
    }
    if cfg.reply_queue:
        channels["defaultReplies"] = {
            "address": cfg.reply_queue,
            "title": "Default reply queue",
            "description": "Replies to requests that carry no reply_to.",
            "messages": {"agentResponse": {"$ref": "#/components/messages/AgentResponse"}},
            "bindings": _queue_binding(cfg.reply_queue, vhost),
        }
    operations: dict[str, Any] = {
        "handleIntent": {
            "action": "receive",
            "channel": {"$ref": "#/channels/requests"},
            "title": "Route one intent",
            "summary": "Route the intent to agents, record it, reply, then ack.",
            "description": (
                "Per message: decode, validate, duplicate check, route, record (durable), "
                "reply (publisher-confirmed), ack. A duplicate requestId is answered from its "
                "record without running agents again."
            ),
            "messages": [{"$ref": "#/channels/requests/messages/intentEnvelope"}],
            "reply": {
                "address": {
                    "description": "The request's reply_to property",
                    "location": "$message.header#/reply_to",
                },
                "channel": {"$ref": "#/channels/replies"},
                "messages": [{"$ref": "#/channels/replies/messages/agentResponse"}],
            },
        },
        "deadLetterRejected": {
            "action": "send",
            "channel": {"$ref": "#/channels/deadLetterExchange"},
            "title": "Dead-letter rejected input",
            "summary": "Bad input is answered with an error reply, recorded, then copied here.",
            "messages": [{"$ref": "#/channels/deadLetterExchange/messages/deadLetter"}],
        },
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "intentusnet-worker",
            "version": __version__,
            "description": (
                "Intents routed deterministically to registered agents over RabbitMQ. "
                "Generated by `intentus contract` from the message models and the "
                "configured topology."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "broker": {
                "host": f"{host}:{port}",
                "protocol": "amqps" if url.scheme == "amqps" else "amqp",
                "protocolVersion": "0.9.1",
                "description": "RabbitMQ (INTENTUS_AMQP_URL)",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": {
                "IntentEnvelope": {
                    "name": "IntentEnvelope",
                    "title": "Intent request",
                    "summary": "One intent to route; published persistent to the request queue.",
                    "description": (
                        "AMQP properties read: reply_to (where the reply goes), correlation_id, "
                        "message_id (requestId fallback), user_id (checked by the broker; "
                        "usable by policy), priority (honoured by classic queues declared with "
                        "x-max-priority), and the headers traceparent and x-delivery-count. "
                        "An id property (correlation_id, message_id, reply_to, user_id, "
                        "content_type) that is not UTF-8 or contains NUL refuses the message "
                        "with PROTOCOL_ERROR before routing; a malformed traceparent or "
                        "x-delivery-count is ignored."
                    ),
                    "contentType": "application/json",
                    "correlationId": correlation,
                    "headers": {
                        "type": "object",
                        "properties": {"traceparent": _TRACEPARENT},
                    },
                    "payload": {"$ref": "#/components/schemas/IntentEnvelope"},
                    "bindings": _message_binding(),
                },
                "AgentResponse": {
                    "name": "AgentResponse",
                    "title": "Reply",
                    "contentType": "application/json",
                    "correlationId": correlation,
                    "headers": {
                        "type": "object",
                        "required": ["x-intentus-status", "x-intentus-execution-id"],
                        "properties": {
                            "x-intentus-status": _header(
                                "the response's status", enum=["success", "error"]
                            ),
                            "x-intentus-execution-id": _header(
                                "the executionId of the record that holds this answer"
                            ),
                            "traceparent": _TRACEPARENT,
                        },
                    },
                    "payload": {"$ref": "#/components/schemas/AgentResponse"},
                    "bindings": _message_binding("AgentResponse"),
                },
                "DeadLetter": {
                    "name": "DeadLetter",
                    "title": "Dead letter",
                    "summary": "The original body and properties (less user_id and expiration).",
                    "headers": {
                        "type": "object",
                        "properties": {
                            "x-intentus-reject-reason": _header(
                                "ErrorCode and message of the rejection (at most 1000 characters)"
                            ),
                            "x-intentus-execution-id": _header(
                                "executionId of the rejected-input record"
                            ),
                            "x-intentus-original-queue": _header("the request queue"),
                            "x-intentus-dead-lettered-at": {
                                "type": "integer",
                                "description": "when the worker dead-lettered it (epoch seconds)",
                            },
                            "x-death": {
                                "type": "array",
                                "description": "set by the broker for messages it dead-lettered",
                            },
                        },
                    },
                    "payload": {"description": "the original request body, unchanged"},
                    "bindings": _message_binding(),
                },
            },
            "schemas": _schemas(IntentEnvelope, AgentResponse),
        },
    }


# -- YAML ------------------------------------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z_$][A-Za-z0-9_.$/-]*$")
_RESERVED = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"}


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _RESERVED:
        return text
    return json.dumps(text, ensure_ascii=False)


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML of JSON data; every string that could be misread is a JSON string."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            name = _scalar(str(key))
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{name}:")
                lines.append(to_yaml(item, indent + 1))
            else:
                lines.append(f"{pad}{name}: {_inline(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                nested = to_yaml(item, indent + 1).lstrip(" ")
                lines.append(f"{pad}- {nested}")
            else:
                lines.append(f"{pad}- {_inline(item)}")
    else:
        lines.append(pad + _scalar(value))
    return "\n".join(lines)


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def render(cfg: Config) -> str:
    return to_yaml(build(cfg)) + "\n"


# -- the command -----------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """`intentus contract` under the CLI's subcommands."""
    c = sub.add_parser(
        "contract",
        help="print the AsyncAPI 3.0 contract of this configuration",
        description="Write the AsyncAPI 3.0 document (YAML) for the configured queues.",
    )
    c.add_argument("--output", "-o", help="write to this file instead of stdout")
    configuration.add_arguments(
        c,
        ["amqp_url", "queue", "queue_type", "queue_max_priority", "reply_queue", "delivery_limit"],
    )


def main(args: argparse.Namespace) -> int:
    text = render(configuration.load(args))
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_OK
