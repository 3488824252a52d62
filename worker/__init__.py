"""intentusnet worker: the AMQP shell around the runtime (consumer, publisher, client,
metrics, health, CLI, lifecycle). `Worker` embeds it in an application; `WorkerMiddleware`
extends it."""

from worker.clients.aio import AsyncIntentusClient
from worker.clients.blocking import IntentusClient
from worker.config import Config
from worker.errors import ClientClosed, ClientError, ConnectionLost, PublishFailed, RequestTimeout
from worker.middleware import WorkerMiddleware
from worker.service import Worker

__all__ = [
    "AsyncIntentusClient",
    "ClientClosed",
    "ClientError",
    "Config",
    "ConnectionLost",
    "IntentusClient",
    "PublishFailed",
    "RequestTimeout",
    "Worker",
    "WorkerMiddleware",
]
