"""End-to-end benchmark: our worker over RabbitMQ against two bare pika echo workers.

The contenders are compared with the equal-durability echo (`durable-echo`: quorum queue,
persistent replies, publisher confirms, each request acked only after its reply is confirmed),
which does the broker work the worker does and nothing else; `baseline`, the tuned echo with
no confirms, shows the box's ceiling.

Each round runs every case, and within a case each contender in turn (baseline, then ours),
so A B A B over the rounds; ratios are taken within one round. Every contender gets its own
queue (quorum, like the worker's default), deleted afterwards with its dead-letter exchange
and queue; file records go to a temporary folder under .intentusnet/ that is removed at the end
of the run (removed at once, it would slow the next file contender: see bench/spent.py).

    python -m bench.e2e                      # the table (2 rounds)
    python -m bench.e2e --soak               # 200k messages, RSS every 10k
    python -m bench.e2e --sweep --json F     # throughput and p99 vs window, for bench/plot_e2e.py

Our worker runs as `python -m worker` in its default configuration (durable file records,
publisher confirms, quorum queue) with the no-op agent in bench/noop_agent.py; the memory
store contender sets INTENTUS_RECORDS_DIR=:memory: (benchmark-only, not for production); the
postgres contender sets INTENTUS_RECORDS_URL to a temporary database created on the --pg-url
server (the `postgres` extra) and dropped afterwards; with --before, so does the earlier
tree's `before-postgres` contender.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pika
import pika.exceptions

from bench.loadgen import URL, LoadGen, Result, find_broker_pid
from bench.spent import remove_later

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


@dataclass(frozen=True)
class Case:
    name: str
    size: int
    window: int
    n: int
    warmup: int
    contenders: tuple[str, ...]


ECHOES = ("baseline", "durable-echo")
CASES = {
    "600B-w256": Case(
        "600 B, window 256", 600, 256, 10_000, 1_000, (*ECHOES, "file", "memory", "postgres")
    ),
    "64KiB-w64": Case("64 KiB, window 64", 64 * 1024 + 600, 64, 2_000, 200, (*ECHOES, "file")),
    "600B-w1": Case("600 B, window 1", 600, 1, 2_000, 200, (*ECHOES, "file", "memory", "postgres")),
}
PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DURABLE = (
    "file",
    "postgres",
    "before",
    "before-postgres",
)  # contenders compared with memory's throughput
SWEEP = (1, 4, 16, 64, 256, 1024)
BEFORE: Path | None = None  # --before: an older source tree, measured as contender "before"
PG_SERVER = PG_URL  # --pg-url: where the postgres contender's temporary databases go
CONTENDERS: set[str] | None = None  # --contenders: run only these (default: all of each case)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _admin(fn: Any) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    try:
        fn(conn.channel())
    finally:
        conn.close()


def _cleanup(queue: str) -> None:
    for attempt in range(5):
        try:
            _delete(queue)
            return
        except pika.exceptions.AMQPConnectionError:
            time.sleep(1 + attempt)
    print(f"warning: could not delete queue {queue}", file=sys.stderr)


def _delete(queue: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    try:
        for q in (queue, f"{queue}.dlq", f"{queue}.replies"):
            try:
                conn.channel().queue_delete(q)
            except pika.exceptions.ChannelClosedByBroker:
                pass
        try:
            conn.channel().exchange_delete(f"{queue}.dlx")
        except pika.exceptions.ChannelClosedByBroker:
            pass
    finally:
        conn.close()


class Contender:
    """A worker process under test, started on its own queue."""

    def __init__(
        self,
        kind: str,
        tag: str,
        extra_env: dict[str, str] | None = None,
        src: Path | None = None,
    ) -> None:
        self.kind = kind
        self.src = src or ROOT  # the source tree the worker runs from
        self.queue = f"bench.e2e.{tag}.{kind}.{uuid.uuid4().hex[:8]}"
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.records: Path | None = None
        self.database = ExitStack()  # the postgres contender's temporary database
        self.records_url: str | None = None
        self.log = ROOT / ".intentusnet" / "bench" / f"{self.queue}.log"

    def start(self) -> int:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log, "wb")  # noqa: SIM115 - lives as long as the process
        if self.kind in ECHOES:
            _admin(
                lambda ch: ch.queue_declare(
                    self.queue, durable=True, arguments={"x-queue-type": "quorum"}
                )
            )
            self.proc = subprocess.Popen(
                [PY, "-m", "bench.baseline", "--queue", self.queue]
                + (["--durable"] if self.kind == "durable-echo" else []),
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=logf,
            )
            assert self.proc.stdout is not None
            if self.proc.stdout.readline().strip() != b"ready":
                raise RuntimeError(f"baseline did not start; see {self.log}")
            return self.proc.pid
        port = _free_port()
        env = dict(os.environ)
        env.update(
            INTENTUS_AGENTS="bench.noop_agent:registry",
            INTENTUS_QUEUE=self.queue,
            INTENTUS_REPLY_QUEUE=f"{self.queue}.replies",
            INTENTUS_METRICS_ADDR=f"127.0.0.1:{port}",
            INTENTUS_WORKER_ID=self.queue.replace("bench.e2e.", "b-"),
            INTENTUS_AMQP_URL=URL,
        )
        if self.kind in ("memory", "before-memory"):
            env["INTENTUS_RECORDS_DIR"] = ":memory:"
        elif self.kind in ("postgres", "before-postgres"):
            from bench.store import temporary_database

            self.records_url = self.database.enter_context(temporary_database(PG_SERVER))
            env["INTENTUS_RECORDS_URL"] = self.records_url
        else:
            self.records = ROOT / ".intentusnet" / "bench" / self.queue
            env["INTENTUS_RECORDS_DIR"] = str(self.records)
        env.update(self.extra_env)
        env["PYTHONPATH"] = str(self.src)
        self.proc = subprocess.Popen(
            [PY, "-m", "worker"], cwd=self.src, env=env, stdout=logf, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}; see {self.log}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
                return self.proc.pid
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"worker not ready in 30 s; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _cleanup(self.queue)
        self.database.close()
        if self.records is not None:
            remove_later(self.records)  # at the end of the run (see bench/spent.py)
        self.log.unlink(missing_ok=True)


def measure(
    kind: str,
    size: int,
    window: int,
    n: int,
    warmup: int,
    tag: str,
    rss_every: int = 0,
) -> Result:
    src = BEFORE if kind.startswith("before") else None
    c = Contender(kind, tag, src=src)
    try:
        pid = c.start()
        watch = {"worker": pid}
        broker = find_broker_pid()
        if broker:
            watch["broker"] = broker
        gen = LoadGen(
            c.queue,
            n,
            window,
            size,
            warmup=warmup,
            watch=watch,
            rss_pid=pid if rss_every else None,
            rss_every=rss_every or 10_000,
        )
        if c.records_url is None:
            return gen.run()
        from bench.store import ServerCpu

        server = ServerCpu(c.records_url)
        try:
            before = server.sample()
            r = gen.run()
            spent = ServerCpu.spent(before, server.sample())
        finally:
            server.close()
        if spent is not None:
            # The database's sessions over the whole run (their pool grows during the warm-up),
            # prorated to the measured replies.
            r.cpu_s["database"] = spent * r.measured / max(1, r.replies)
        return r
    finally:
        c.stop()


def per_request_us(r: Result) -> float:
    return r.cpu_s.get("worker", 0.0) / max(1, r.measured) * 1e6


def run_table(cases: list[str], rounds: int, scale: float) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for rnd in range(1, rounds + 1):
        for key in cases:
            case = CASES[key]
            n = max(100, int(case.n * scale))
            got: dict[str, Result] = {}
            # The earlier tree runs with the stores this case runs.
            befores = tuple(
                f"before-{kind}".replace("-file", "")
                for kind in ("file", "memory", "postgres")
                if kind in case.contenders
            )
            kinds = case.contenders + (befores if BEFORE is not None else ())
            kinds = tuple(k for k in kinds if CONTENDERS is None or k in CONTENDERS)
            for kind in kinds:
                r = measure(kind, case.size, case.window, n, int(case.warmup * scale), key)
                got[kind] = r
                print(f"round {rnd} {case.name:18} {kind:8} {r.line()}", flush=True)
            base, peer = got.get("baseline"), got.get("durable-echo")
            for kind, r in got.items():
                rows.append(
                    {
                        "round": rnd,
                        "case": key,
                        "contender": kind,
                        "msgs_per_s": r.msgs_per_s,
                        "vs_baseline": r.msgs_per_s / base.msgs_per_s if base else None,
                        "vs_durable_echo": r.msgs_per_s / peer.msgs_per_s if peer else None,
                        "vs_memory": (
                            r.msgs_per_s / got["memory"].msgs_per_s if "memory" in got else None
                        ),
                        "worker_us_per_req": per_request_us(r),
                        "broker_us_per_req": r.cpu_s.get("broker", 0.0) / max(1, r.measured) * 1e6,
                        "database_us_per_req": (
                            r.cpu_s["database"] / max(1, r.measured) * 1e6
                            if "database" in r.cpu_s
                            else None
                        ),
                        "p50_ms": r.p50_ms,
                        "p99_ms": r.p99_ms,
                        "lost": r.lost,
                        "mismatched": r.mismatched,
                    }
                )
    return {"rows": rows}


def _us(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def print_table(data: dict[str, Any]) -> None:
    print()
    print(
        "| round | case | worker | msgs/s | vs durable echo | vs baseline | vs memory | "
        "worker CPU µs/req | broker CPU µs/req | database CPU µs/req | p50 ms | p99 ms | lost | "
        "mismatched |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in data["rows"]:
        vs_m = r["vs_memory"] if r["contender"] in DURABLE else None
        print(
            f"| {r['round']} | {CASES[r['case']].name} | {r['contender']} | "
            f"{r['msgs_per_s']:.0f} | {_ratio(r.get('vs_durable_echo'))} | "
            f"{_ratio(r['vs_baseline'])} | {_ratio(vs_m)} | {r['worker_us_per_req']:.0f} | "
            f"{r['broker_us_per_req']:.0f} | {_us(r.get('database_us_per_req'))} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['lost']} | {r['mismatched']} |"
        )
    print()
    print("Medians over rounds:")
    print(
        "| case | worker | msgs/s | vs durable echo | vs baseline | vs memory | "
        "worker CPU µs/req | database CPU µs/req | p50 ms | p99 ms |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    keys = dict.fromkeys((r["case"], r["contender"]) for r in data["rows"])
    for case, kind in keys:
        sel = [r for r in data["rows"] if r["case"] == case and r["contender"] == kind]

        def med(f: str, sel: list[dict[str, Any]] = sel) -> float | None:
            vals = [r[f] for r in sel if r.get(f) is not None]
            return statistics.median(vals) if vals else None

        med_m = med("vs_memory") if kind in DURABLE else None
        print(
            f"| {CASES[case].name} | {kind} | {med('msgs_per_s'):.0f} | "
            f"{_ratio(med('vs_durable_echo'))} | {_ratio(med('vs_baseline'))} | "
            f"{_ratio(med_m)} | {med('worker_us_per_req'):.0f} | "
            f"{_us(med('database_us_per_req'))} | {med('p50_ms'):.2f} | {med('p99_ms'):.2f} |"
        )


def run_soak(n: int, every: int) -> dict[str, Any]:
    r = measure("file", 600, 256, n, 0, "soak", rss_every=every)
    print(f"soak {r.line()}")
    print()
    print("| replies | worker RSS MiB |")
    print("|---:|---:|")
    for count, rss in r.rss_series:
        print(f"| {count} | {rss / 2**20:.1f} |")
    series = dict(r.rss_series)
    if 20_000 in series and n in series:
        growth = series[n] / series[20_000] - 1
        print(f"\nRSS after {n} vs after 20000: {growth:+.1%}")
    return {"soak": asdict(r)}


def run_sweep(rounds: int, scale: float) -> dict[str, Any]:
    points: list[dict[str, Any]] = []
    for rnd in range(1, rounds + 1):
        for w in SWEEP:
            n = max(200, int((1_500 if w == 1 else 6_000) * scale))
            for kind in ("baseline", "file"):
                r = measure(kind, 600, w, n, n // 10, f"w{w}")
                print(f"round {rnd} window {w:5} {kind:8} {r.line()}", flush=True)
                points.append(
                    {
                        "round": rnd,
                        "window": w,
                        "contender": kind,
                        "msgs_per_s": r.msgs_per_s,
                        "p50_ms": r.p50_ms,
                        "p99_ms": r.p99_ms,
                        "worker_us_per_req": per_request_us(r),
                    }
                )
    return {"sweep": points}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cases", default=",".join(CASES), help=f"any of {', '.join(CASES)}")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply message counts")
    ap.add_argument("--soak", action="store_true", help="200k messages, RSS every 10k")
    ap.add_argument("--soak-n", type=int, default=200_000)
    ap.add_argument("--sweep", action="store_true", help="throughput and p99 vs window")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument(
        "--before",
        help="source tree of an earlier version (e.g. a git worktree), run as contender "
        "'before' with durable file records (and 'before-memory' with memory records, "
        "'before-postgres' with PostgreSQL records) after ours in every case",
    )
    ap.add_argument(
        "--contenders",
        help="run only these contenders, comma-separated (baseline, durable-echo, file, memory, "
        "postgres, before, before-memory, before-postgres)",
    )
    ap.add_argument(
        "--pg-url",
        default=PG_URL,
        help="PostgreSQL server for the postgres contender's temporary databases "
        "(default: %(default)s)",
    )
    a = ap.parse_args()
    global BEFORE, CONTENDERS, PG_SERVER
    BEFORE = Path(a.before).resolve() if a.before else None
    CONTENDERS = {c.strip() for c in a.contenders.split(",")} if a.contenders else None
    PG_SERVER = a.pg_url
    print("command: python -m bench.e2e " + " ".join(sys.argv[1:]), flush=True)
    if a.soak:
        data = run_soak(a.soak_n, 10_000)
    elif a.sweep:
        data = run_sweep(a.rounds, a.scale)
    else:
        cases = [c.strip() for c in a.cases.split(",") if c.strip()]
        for c in cases:
            if c not in CASES:
                ap.error(f"unknown case {c!r}")
        data = run_table(cases, a.rounds, a.scale)
        print_table(data)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
