"""How the `intentus` commands read durations and times and print their results."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """`90s`, `15m`, `12h`, `30d`, `2w` → seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"invalid duration {text!r} (use e.g. 90s, 15m, 12h, 30d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_since(text: str) -> datetime:
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
    except ConfigError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--since: expected a duration (1h) or an ISO 8601 time, got {text!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_TITLES = {
    "createdAt": "CREATED",
    "executionId": "EXECUTION ID",
    "requestId": "REQUEST ID",
    "errorCode": "ERROR",
}


def output(
    value: Any, *, as_json: bool, lines: Iterable[str] = (), ensure_ascii: bool = True
) -> None:
    """The one way commands print: `value` as indented JSON, or the text `lines`."""
    if as_json:
        sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=ensure_ascii) + "\n")
        return
    for line in lines:
        sys.stdout.write(line + "\n")


def table(rows: list[dict[str, Any]], columns: list[str]) -> Iterator[str]:
    """`rows` as aligned text columns under titles ("no records" when there are none)."""
    if not rows:
        yield "no records"
        return
    titles = [_TITLES.get(c, c.upper()) for c in columns]
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(t), *(len(row[i]) for row in cells)) for i, t in enumerate(titles)]
    for row in [titles, *cells]:
        yield "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
