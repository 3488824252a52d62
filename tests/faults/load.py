"""Load generation and accounting for the fault suite.

`Publisher` publishes with publisher confirms and, if the broker goes away, reconnects and
re-publishes what was not confirmed (at-least-once, the way a careful client behaves).
`Collector` consumes one durable reply queue on its own thread, reconnecting too, and keeps
every reply by correlation id. `figures()` turns sent / replies / the agents' side-effect file
into the numbers each scenario prints.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pika.exceptions

from tests.support.broker import AMQP_URL

_RETRYABLE = (pika.exceptions.AMQPError, OSError)


def envelope(
    intent: str,
    payload: dict[str, Any] | None = None,
    *,
    request_id: str | None = None,
    strategy: str = "DIRECT",
    **routing: Any,
) -> dict[str, Any]:
    return {
        "version": "1.0",
        "intent": {"name": intent, "version": "1.0"},
        "payload": payload or {},
        "context": {"sourceAgent": "faults"},
        "metadata": {"requestId": request_id or f"req-{uuid.uuid4().hex}", "source": "faults"},
        "routing": {"strategy": strategy, **routing},
    }


def body_of(env: dict[str, Any]) -> bytes:
    return json.dumps(env, separators=(",", ":")).encode()


@dataclass
class Message:
    body: bytes
    correlation_id: str
    request_id: str | None = None
    content_type: str | None = "application/json"
    reply_to: str | None = None
    headers: dict[str, Any] | None = None
    user_id: str | None = None
    # AMQP properties published as given instead of the ones above (bytes, NUL, None: the
    # adversarial suite's odd-but-legal values); `correlation_id` above stays the test's key.
    overrides: dict[str, Any] | None = None


def request(
    intent: str, payload: dict[str, Any] | None = None, reply_to: str | None = None, **kw: Any
) -> Message:
    env = envelope(intent, payload, **kw)
    rid = env["metadata"]["requestId"]
    return Message(body_of(env), correlation_id=uuid.uuid4().hex, request_id=rid, reply_to=reply_to)


class Publisher:
    """Publishes to the default exchange with confirms; survives broker restarts."""

    def __init__(self, queue: str, url: str = AMQP_URL, retry_for_s: float = 120.0) -> None:
        self.queue = queue
        self.url = url
        self.retry_for_s = retry_for_s
        self.conn: pika.BlockingConnection | None = None
        self.ch: Any = None
        self.sent = 0
        self.republished = 0
        self.reconnects = 0

    def _connect(self) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(self.url))
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()

    def publish(self, m: Message) -> None:
        deadline = time.monotonic() + self.retry_for_s
        attempt = 0
        while True:
            try:
                if self.conn is None or self.conn.is_closed:
                    self._connect()
                props = {
                    "content_type": m.content_type,
                    "delivery_mode": 2,
                    "correlation_id": m.correlation_id,
                    "message_id": m.request_id,
                    "reply_to": m.reply_to,
                    "headers": m.headers,
                    "user_id": m.user_id,
                    **(m.overrides or {}),
                }
                self.ch.basic_publish(
                    "", self.queue, m.body, pika.BasicProperties(**props), mandatory=True
                )
                self.sent += 1
                self.republished += 1 if attempt else 0
                return
            except _RETRYABLE:
                attempt += 1
                self.reconnects += 1
                self.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def publish_all(self, messages: list[Message], rate: float | None = None) -> None:
        """Publish in order; with `rate`, at most that many per second."""
        start = time.monotonic()
        for i, m in enumerate(messages):
            if rate:
                ahead = start + i / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            self.publish(m)

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:
                pass


@dataclass
class Reply:
    body: bytes
    headers: dict[str, Any]
    at: float

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]

    @property
    def code(self) -> str | None:
        err = self.json.get("error")
        return None if err is None else err["code"]


class Collector:
    """Consumes a reply queue (declared durable) on a thread; reconnects after broker loss."""

    def __init__(
        self,
        queue: str,
        url: str = AMQP_URL,
        on_reply: Callable[[str, Reply], None] | None = None,
        declare: bool = True,
    ) -> None:
        self.queue = queue
        self.url = url
        self.on_reply = on_reply
        self.declare = declare
        self.replies: dict[str, list[Reply]] = {}
        # Replies whose correlation id is missing or not text, kept for matching by body.
        self.odd: list[Reply] = []
        self.unmatched = 0
        self.reconnects = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-collector", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn = pika.BlockingConnection(pika.URLParameters(self.url))
            except _RETRYABLE:
                self.reconnects += 1
                time.sleep(0.2)
                continue
            try:
                ch = conn.channel()
                if self.declare:
                    ch.queue_declare(self.queue, durable=True)
                ch.basic_qos(prefetch_count=500)
                ch.basic_consume(self.queue, self._on_message)
                while not self._stop.is_set():
                    conn.process_data_events(time_limit=0.2)
            except _RETRYABLE:
                self.reconnects += 1
                time.sleep(0.2)
            finally:
                try:
                    if conn.is_open:
                        conn.close()
                except Exception:
                    pass

    def _on_message(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        cid = props.correlation_id
        reply = Reply(body, dict(props.headers or {}), time.monotonic())
        if not isinstance(cid, str):  # None, or bytes when it is not UTF-8
            self.unmatched += 1
            with self._lock:
                self.odd.append(reply)
        else:
            if self.on_reply is not None:
                self.on_reply(cid, reply)
            with self._lock:
                self.replies.setdefault(cid, []).append(reply)
        ch.basic_ack(method.delivery_tag)

    def count(self, cids: set[str] | None = None) -> int:
        with self._lock:
            if cids is None:
                return len(self.replies)
            return sum(1 for c in self.replies if c in cids)

    def wait_for(
        self,
        cids: set[str],
        timeout: float,
        idle_timeout: float | None = None,
        poll: float = 0.1,
    ) -> bool:
        """Until every cid has a reply, or `timeout` passes (or nothing new for `idle_timeout`)."""
        deadline = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            n = self.count(cids)
            if n >= len(cids):
                return True
            if n != last:
                last, last_change = n, time.monotonic()
            elif idle_timeout is not None and time.monotonic() - last_change > idle_timeout:
                return False
            time.sleep(poll)
        return False

    def first(self, cid: str) -> Reply | None:
        with self._lock:
            got = self.replies.get(cid)
            return got[0] if got else None

    def everything(self) -> list[Reply]:
        """Every reply received so far, matched or not."""
        with self._lock:
            return [r for rs in self.replies.values() for r in rs] + list(self.odd)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def executions(exec_log: Path) -> Counter[tuple[str, str]]:
    """(requestId, agent) → how many times that agent really ran for that request."""
    out: Counter[tuple[str, str]] = Counter()
    try:
        text = exec_log.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            out[(parts[0], parts[1])] += 1
    return out


@dataclass
class Figures:
    scenario: str
    sent: int
    replied: int
    lost: int
    executed_twice: int
    in_doubt: int
    executed: int
    duplicate_replies: int
    inconsistent_replies: int
    codes: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "sent": self.sent,
            "replied": self.replied,
            "lost": self.lost,
            "executed_twice": self.executed_twice,
            "in_doubt": self.in_doubt,
            "executed": self.executed,
            "duplicate_replies": self.duplicate_replies,
            "inconsistent_replies": self.inconsistent_replies,
            "codes": self.codes,
            **self.extra,
        }


def figures(
    scenario: str,
    messages: list[Message],
    collector: Collector,
    exec_log: Path | None,
    **extra: Any,
) -> Figures:
    cids = {m.correlation_id for m in messages}
    rids = {m.request_id for m in messages if m.request_id}
    codes: Counter[str] = Counter()
    dup = inconsistent = in_doubt = 0
    with collector._lock:
        answered = {c: list(collector.replies[c]) for c in cids if c in collector.replies}
    for replies in answered.values():
        dup += len(replies) - 1
        if len({r.body for r in replies}) > 1:
            inconsistent += 1
        code = replies[0].code or "success"
        codes[code] += 1
        if code == "EXECUTION_IN_DOUBT":
            in_doubt += 1
    runs = executions(exec_log) if exec_log is not None else Counter()
    twice = sum(1 for (rid, _agent), n in runs.items() if n > 1 and rid in rids)
    executed = len({rid for (rid, _agent) in runs if rid in rids})
    return Figures(
        scenario=scenario,
        sent=len(cids),
        replied=len(answered),
        lost=len(cids) - len(answered),
        executed_twice=twice,
        in_doubt=in_doubt,
        executed=executed,
        duplicate_replies=dup,
        inconsistent_replies=inconsistent,
        codes=dict(sorted(codes.items())),
        extra=extra,
    )


def report(fig: Figures | dict[str, Any]) -> dict[str, Any]:
    """Print the figures (visible with -s) and append them to $INTENTUS_FAULT_FIGURES."""
    data = fig.as_dict() if isinstance(fig, Figures) else fig
    line = json.dumps(data, sort_keys=False)
    print(f"\nFIGURES {line}", flush=True)
    path = os.environ.get("INTENTUS_FAULT_FIGURES")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    return data


def record_files(records_dir: Path) -> list[Path]:
    return [
        p
        for p in records_dir.rglob("exec-*.json")
        if not any(
            part in (".tmp", ".claims", ".owners") for part in p.relative_to(records_dir).parts
        )
    ]


def temp_files(records_dir: Path) -> list[Path]:
    tmp = records_dir / ".tmp"
    return [p for p in tmp.rglob("*") if p.is_file()] if tmp.exists() else []


def proc_sample(pid: int) -> tuple[int, int]:
    """(RSS bytes, open fds) of a live process, from /proc."""
    rss = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
                break
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


def tcp_ports(pid: int) -> set[int]:
    """Local TCP ports of a live process's sockets (its database sessions among them), from
    /proc: the socket inodes among its descriptors, looked up in its network tables."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[9] in inodes:
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports
