"""Everything that speaks AMQP: the only package that imports pika.

- `topology`: the queues and exchanges, checked at start (and after each reconnect).
- `consumer`: `ConsumerConnection`, the worker's connection and its I/O thread (consuming,
  acks, reconnecting); it implements `worker.transport.Transport`.
- `mailbox`: how other threads hand work to an I/O thread (one wake-up per burst).
- `publisher`: the worker's replies and dead letters, settled by publisher confirms.
- `client_link`, `client_connections`: one client connection's protocol, run on its own I/O
  thread for the blocking client or in the event loop for the asyncio one.
- `dead_letters`: `intentus dlq`'s blocking access to the dead-letter queue.
- `connect`: connection parameters, and pika's errors described in words.

pika errors are translated in this package, once, into the worker's own exceptions; nothing
outside it imports pika (tests/unit/worker/test_amqp.py checks).
"""

from worker.amqp.client_connections import AsyncClientConnection, ClientConnection
from worker.amqp.consumer import ConsumerConnection
from worker.amqp.dead_letters import DeadLetterQueue, HeldMessage
from worker.amqp.publisher import MAX_SHORTSTR, fit_correlation_id, settle_confirmed
from worker.amqp.topology import declare_topology, queue_arguments

__all__ = [
    "MAX_SHORTSTR",
    "AsyncClientConnection",
    "ClientConnection",
    "ConsumerConnection",
    "DeadLetterQueue",
    "HeldMessage",
    "declare_topology",
    "fit_correlation_id",
    "queue_arguments",
    "settle_confirmed",
]
