"""Opening connections: URL parameters, a blocking connection with retries, and pika's
failures described in words."""

from __future__ import annotations

import ssl
import time

import pika
import pika.exceptions

from worker.config import mask_url
from worker.errors import BrokerUnavailable, ClientError

PERSISTENT = 2


def parameters(url: str, name: str) -> pika.URLParameters:
    """URL parameters; amqps:// verifies the server certificate with the system CAs unless
    the URL carries its own ssl_options."""
    params = pika.URLParameters(url)
    if url.startswith("amqps://") and params.ssl_options is None:
        context = ssl.create_default_context()
        params.ssl_options = pika.SSLOptions(context, params.host)
    params.client_properties = {"connection_name": name, "product": "intentusnet-worker"}
    if "connection_attempts" not in url:
        params.connection_attempts = 1
    if "socket_timeout" not in url:
        params.socket_timeout = 5
    return params


def connect_blocking(
    url: str, name: str, *, attempts: int = 3, delay_s: float = 1.0
) -> pika.BlockingConnection:
    """A blocking connection (topology checks, `intentus dlq`), tried `attempts` times."""
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            return pika.BlockingConnection(parameters(url, name))
        except pika.exceptions.ProbableAuthenticationError as exc:
            raise BrokerUnavailable(f"broker at {mask_url(url)} refused the login: {exc}") from exc
        except pika.exceptions.ProbableAccessDeniedError as exc:
            raise BrokerUnavailable(
                f"broker at {mask_url(url)} denied access to the vhost: {exc}"
            ) from exc
        except (pika.exceptions.AMQPError, OSError) as exc:
            last = exc
            if attempt + 1 < attempts:
                time.sleep(delay_s)
    detail = f"{type(last).__name__}: {last}" if str(last) else type(last).__name__
    raise BrokerUnavailable(
        f"cannot reach the broker at {mask_url(url)} after {attempts} "
        f"attempt{'' if attempts == 1 else 's'} ({detail})"
    ) from last


def describe(exc: BaseException | None) -> str:
    """What went wrong, in words: pika wraps the cause (a refused or reset socket, a failed
    login) in layers of workflow exceptions whose own text says little."""
    if exc is None:
        return "unknown reason"
    root: BaseException = exc
    for _ in range(8):
        inner = getattr(root, "exceptions", None)
        if inner:
            root = inner[-1]
            continue
        single = getattr(root, "exception", None)
        if isinstance(single, BaseException):
            root = single
            continue
        nested = [a for a in root.args if isinstance(a, BaseException)]
        if not nested:
            break
        root = nested[-1]
    text = str(root)
    return f"{type(root).__name__}: {text}" if text else type(root).__name__


def translated(error: ClientError, cause: BaseException | None) -> ClientError:
    """`error` with `cause` as its `__cause__`: what `raise error from cause` records, for
    errors handed to waiters instead of raised."""
    error.__cause__ = cause
    return error
