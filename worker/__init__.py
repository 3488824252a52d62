"""intentusnet worker: the AMQP shell around the runtime (consumer, publisher, client,
metrics, health, CLI, lifecycle)."""

from worker.client import IntentusClient
from worker.config import Config
from worker.errors import ClientError, PublishFailed, RequestTimeout

__all__ = ["ClientError", "Config", "IntentusClient", "PublishFailed", "RequestTimeout"]
