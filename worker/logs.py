"""Logging: text or JSON lines on stderr, request and trace ids on every line about a message,
and the broker password scrubbed from everything (ours and the libraries')."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from runtime.clock import format_timestamp
from worker.config import mask_url

_BLANK = logging.LogRecord(name="", level=0, pathname="", lineno=0, msg="", args=(), exc_info=None)
_STD = set(vars(_BLANK)) | {"message", "asctime"}  # what is not an `extra` field


class Scrub(logging.Filter):
    """Replaces secrets in the final message (and in exception text)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        # A password is logged as found in the URL (percent-encoded) as often as decoded.
        spellings = {s for s in secrets if s} | {quote(s, safe="") for s in secrets if s}
        self.secrets = sorted(spellings, key=len, reverse=True)

    def _clean(self, text: str) -> str:
        text = mask_url(text)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg, record.args = self._clean(record.getMessage()), None
            if record.exc_info and not record.exc_text:
                text = logging.Formatter().formatException(record.exc_info)
                record.exc_text, record.exc_info = self._clean(text), None
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STD and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": format_timestamp(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


def setup(
    log_format: str = "text", secrets: list[str] | None = None, level: int = logging.INFO
) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(Scrub(list(secrets or [])))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # pika reports every failure at ERROR with tracebacks; amqp.py translates and logs them once.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
