"""The worker's exceptions and exit codes.

WorkerError                   base; carries the process exit code
+-- ConfigError               bad usage or configuration (exit 2)
+-- BrokerUnavailable         cannot reach or log in to the broker at start (exit 3)
+-- TopologyConflict          a queue/exchange exists with other arguments (exit 3)
+-- RecordsUnusable           the records folder cannot be used at start (exit 4)
+-- ClientError               raised by IntentusClient and AsyncIntentusClient
    +-- ConnectionLost        broker unreachable, or the connection died mid-request (exit 3)
    +-- PublishFailed         the broker refused or could not route the request
    +-- RequestTimeout        no confirm and reply within the timeout
    +-- ClientClosed          the client was closed
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_BROKER = 3
EXIT_RECORDS = 4
EXIT_GRACE_EXPIRED = 75
EXIT_SECOND_SIGNAL = 130


class WorkerError(Exception):
    exit_code = EXIT_ERROR


class ConfigError(WorkerError):
    exit_code = EXIT_CONFIG


class BrokerUnavailable(WorkerError):
    exit_code = EXIT_BROKER


class TopologyConflict(WorkerError):
    exit_code = EXIT_BROKER


class RecordsUnusable(WorkerError):
    exit_code = EXIT_RECORDS


class ClientError(WorkerError):
    """Base of what the client libraries raise."""


class ConnectionLost(ClientError):
    """The broker cannot be reached, or the connection died while a request was in flight
    (the request may still be executed)."""

    exit_code = EXIT_BROKER


class PublishFailed(ClientError):
    """The broker refused or could not route the request."""


class RequestTimeout(ClientError, TimeoutError):
    """No reply arrived within the timeout (the request may still be executed)."""


class ClientClosed(ClientError):
    """The client was closed before or while the request was sent."""


def fresh(error: ClientError) -> ClientError:
    """A copy of a shared error to raise in one caller, keeping its cause."""
    copy = type(error)(*error.args)
    copy.__cause__ = error.__cause__
    return copy
