"""Load generator: N requests over one asynchronous pika connection, at most W in flight.

Each request gets a unique correlation id and a run-unique requestId; replies come back on an
exclusive queue and are matched by correlation id (and must carry the request's id). The first
`warmup` replies are not measured. CPU of the watched processes is read from /proc.

    python -m bench.loadgen --queue Q -n 10000 -w 256 --watch PID
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import pika

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def find_broker_pid() -> int | None:
    """The RabbitMQ Erlang VM, to report the broker's share of the CPU."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/comm") as fh:
                if fh.read().strip() == "beam.smp":
                    return int(name)
        except OSError:
            continue
    return None


def envelope_template(size: int) -> bytes:
    """A valid IntentEnvelope of about `size` bytes with a placeholder for the requestId."""
    env: dict[str, Any] = {
        "version": "1.0",
        "intent": {"name": "BenchIntent", "version": "1.0"},
        "payload": {"document_id": "doc-123", "pad": ""},
        "context": {
            "sourceAgent": "bench",
            "timestamp": "2024-01-15T10:30:00.000Z",
            "priority": "NORMAL",
            "tags": ["bench"],
        },
        "metadata": {
            "requestId": "@RID@",
            "source": "bench",
            "createdAt": "2024-01-15T10:30:00.000Z",
            "traceId": "0123456789abcdef0123456789abcdef",
            "identityChain": [],
        },
        "routing": {"strategy": "DIRECT", "targetAgent": None, "fallbackAgents": []},
    }
    base = len(json.dumps(env, separators=(",", ":"))) + 36  # a requestId of about 40 chars
    env["payload"]["pad"] = "x" * max(0, size - base)
    return json.dumps(env, separators=(",", ":")).encode()


@dataclass
class Result:
    sent: int = 0
    replies: int = 0
    measured: int = 0
    seconds: float = 0.0
    msgs_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    lost: int = 0
    mismatched: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)
    rss_series: list[tuple[int, int]] = field(default_factory=list)

    def line(self) -> str:
        cpu = " ".join(f"{k}={v:.2f}s" for k, v in self.cpu_s.items())
        return (
            f"{self.msgs_per_s:8.0f} msg/s  p50 {self.p50_ms:6.2f} ms  p99 {self.p99_ms:6.2f} ms  "
            f"replies {self.replies}/{self.sent}  lost {self.lost}  mismatched {self.mismatched}"
            f"  cpu {cpu}"
        )


class LoadGen:
    def __init__(
        self,
        queue: str,
        n: int,
        window: int,
        size: int = 600,
        *,
        warmup: int = 0,
        watch: dict[str, int] | None = None,
        rss_pid: int | None = None,
        rss_every: int = 10_000,
        idle_timeout_s: float = 30.0,
        url: str = URL,
    ) -> None:
        self.queue = queue
        self.n = n
        self.window = window
        self.warmup = min(warmup, max(0, n - 1))
        self.watch = dict(watch or {})
        self.rss_pid = rss_pid
        self.rss_every = rss_every
        self.idle_timeout_s = idle_timeout_s
        self.url = url
        self.run_id = uuid.uuid4().hex[:12]
        self.template = envelope_template(size)
        self.result = Result()
        self._pending: dict[str, tuple[float, bytes]] = {}
        self._lat: list[float] = []
        self._next = 0
        self._last_reply = 0.0
        self._t0 = 0.0
        self._cpu0: dict[str, float] = {}
        self._conn: pika.SelectConnection | None = None
        self._ch: Any = None
        self._reply_q = ""
        self._error: str | None = None

    # -- run ---------------------------------------------------------------------------
    def run(self) -> Result:
        self.watch.setdefault("loadgen", os.getpid())
        params = pika.URLParameters(self.url)
        self._conn = pika.SelectConnection(
            params,
            on_open_callback=lambda c: c.channel(on_open_callback=self._on_channel),
            on_open_error_callback=self._on_fail,
            on_close_callback=lambda c, r: c.ioloop.stop(),
        )
        self._conn.ioloop.start()
        if self._error:
            raise RuntimeError(self._error)
        return self._finish()

    def _on_fail(self, conn: Any, exc: BaseException) -> None:
        self._error = f"cannot connect: {exc}"
        conn.ioloop.stop()

    def _on_channel(self, ch: Any) -> None:
        self._ch = ch
        ch.queue_declare("", exclusive=True, auto_delete=True, callback=self._on_reply_queue)

    def _on_reply_queue(self, frame: Any) -> None:
        self._reply_q = frame.method.queue
        self._ch.basic_consume(self._reply_q, self._on_reply, auto_ack=True)
        self._last_reply = time.monotonic()
        if self.warmup == 0:
            self._start_measuring()
        for _ in range(min(self.window, self.n)):
            self._publish()
        assert self._conn is not None
        self._conn.ioloop.call_later(1.0, self._watchdog)

    def _start_measuring(self) -> None:
        self._cpu0 = {k: cpu_seconds(p) for k, p in self.watch.items()}
        self._t0 = time.monotonic()

    def _publish(self) -> None:
        i = self._next
        self._next += 1
        rid = f"bench-{self.run_id}-{i}".encode()
        cid = f"{self.run_id}.{i}"
        body = self.template.replace(b"@RID@", rid)
        props = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=2,
            correlation_id=cid,
            reply_to=self._reply_q,
        )
        self._pending[cid] = (time.monotonic(), rid)
        self._ch.basic_publish("", self.queue, body, props)
        self.result.sent += 1

    def _on_reply(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        now = time.monotonic()
        self._last_reply = now
        entry = self._pending.pop(props.correlation_id, None)
        r = self.result
        if entry is None:
            r.mismatched += 1
            return
        sent_at, rid = entry
        if rid not in body:
            r.mismatched += 1
        r.replies += 1
        if r.replies > self.warmup:
            self._lat.append(now - sent_at)
        elif r.replies == self.warmup:
            self._start_measuring()
        if self.rss_pid is not None and r.replies % self.rss_every == 0:
            r.rss_series.append((r.replies, rss_bytes(self.rss_pid)))
        if self._next < self.n:
            self._publish()
        elif not self._pending:
            self._stop()

    def _watchdog(self) -> None:
        if time.monotonic() - self._last_reply > self.idle_timeout_s:
            self._stop()
            return
        assert self._conn is not None
        self._conn.ioloop.call_later(1.0, self._watchdog)

    def _stop(self) -> None:
        if self.result.seconds == 0.0:
            self.result.seconds = time.monotonic() - self._t0
            self.result.cpu_s = {
                k: cpu_seconds(p) - self._cpu0.get(k, 0.0) for k, p in self.watch.items()
            }
        assert self._conn is not None
        if self._conn.is_open:
            self._conn.close()

    def _finish(self) -> Result:
        r = self.result
        r.lost = len(self._pending)
        r.measured = len(self._lat)
        if r.seconds > 0:
            r.msgs_per_s = r.measured / r.seconds
        if self._lat:
            lat = sorted(self._lat)
            r.p50_ms = lat[len(lat) // 2] * 1000
            r.p99_ms = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--queue", required=True)
    ap.add_argument("-n", type=int, default=10_000, help="requests")
    ap.add_argument("-w", "--window", type=int, default=256, help="at most this many in flight")
    ap.add_argument("--size", type=int, default=600, help="envelope bytes")
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--watch", type=int, action="append", default=[], help="pid to measure")
    ap.add_argument("--rss-every", type=int, default=0, help="sample RSS of the first --watch pid")
    ap.add_argument("--url", default=URL)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    watch = {f"pid{p}": p for p in a.watch}
    broker = find_broker_pid()
    if broker:
        watch["broker"] = broker
    gen = LoadGen(
        a.queue,
        a.n,
        a.window,
        a.size,
        warmup=a.warmup,
        watch=watch,
        rss_pid=a.watch[0] if a.rss_every and a.watch else None,
        rss_every=a.rss_every or 10_000,
        url=a.url,
    )
    res = gen.run()
    print(json.dumps(asdict(res)) if a.json else res.line())


if __name__ == "__main__":
    main()
