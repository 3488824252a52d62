"""intentusnet worker: the AMQP shell around the runtime (consumer, publisher, client,
metrics, health, CLI, lifecycle)."""

from worker.clients.aio import AsyncIntentusClient
from worker.clients.blocking import IntentusClient
from worker.config import Config
from worker.errors import ClientClosed, ClientError, ConnectionLost, PublishFailed, RequestTimeout

__all__ = [
    "AsyncIntentusClient",
    "ClientClosed",
    "ClientError",
    "Config",
    "ConnectionLost",
    "IntentusClient",
    "PublishFailed",
    "RequestTimeout",
]
