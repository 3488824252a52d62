"""µs per record for each execution store: claim, commit the record, release.

    .venv/bin/python bench/store.py [--n 4000] [--threads 8] [--rounds 2]
        [--backends memory,files,postgres] [--pg-url URL | --pg-database URL]

Each of `--threads` threads takes its share of `--n` records and does, per record, what the
worker does around a request: claim its executionId (the claim must be won), write the record
and wait until it is durable (committed together with the other threads' records), release
the claim. The bytes are a real record, made by routing one request through the runtime
(about 2.3 KiB with the default 600-byte request, as in bench/e2e.py), with a fresh
executionId per record.

Backends: memory (the in-run baseline), files (FileRecordStore in a fresh folder on disk,
under .intentusnet/bench/ unless --records-dir) and postgres (PostgresRecordStore in a
temporary database created on the --pg-url server and dropped afterwards; --pg-database uses
an existing database as it is instead). Every round runs every backend in turn, so they
alternate A B C A B C; ratios (a backend's µs per record over memory's, or over files') are
within one round; the summary is the median over rounds. Client CPU is this process's CPU
time per record; for postgres, server CPU is the CPU time of the temporary database's own
server sessions per record (local server only). For postgres, the store's figures show the
round trips: pool checkouts per record (a share of a group claim, plus a share of a commit),
how many claims each claim statement carried and how many records each record statement
carried.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import cpu_seconds, envelope_template
from bench.noop_agent import registry
from bench.spent import remove_later
from runtime import IntentusRuntime
from runtime.claims import new_owner_token
from runtime.envelope import RequestContext
from runtime.stores.base import RecordStore
from runtime.stores.files.store import FileRecordStore
from runtime.stores.memory import MemoryRecordStore

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("memory", "files", "postgres")
PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
USER = "guest"


@dataclass
class Result:
    backend: str
    records: int
    seconds: float
    cpu_s: float
    claim_us: float  # mean latency of one call, per phase
    commit_us: float
    release_us: float
    server_cpu_s: float | None = None
    pool: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # the store's statements, if counted

    @property
    def per_s(self) -> float:
        return self.records / self.seconds

    @property
    def us(self) -> float:
        return self.seconds / self.records * 1e6

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.records * 1e6

    @property
    def server_cpu_us(self) -> float | None:
        if self.server_cpu_s is None:
            return None
        return self.server_cpu_s / self.records * 1e6

    @property
    def checkouts(self) -> float | None:
        """Pool checkouts per record (claims, commit rounds, releases)."""
        return self.pool["requests_num"] / self.records if self.pool else None

    @property
    def per_commit(self) -> float | None:
        """Records per record statement (a group commit writes many in one)."""
        statements = self.counts.get("record_statements")
        return self.counts["records"] / statements if statements else None

    @property
    def per_claim(self) -> float | None:
        """Claims per claim statement (a group claim asks for many in one)."""
        statements = self.counts.get("claim_statements")
        return self.counts["claims"] / statements if statements else None

    @property
    def waited(self) -> float | None:
        """Percentage of checkouts that found no free connection and waited for one."""
        if not self.pool:
            return None
        return self.pool["requests_queued"] * 100 / max(1, self.pool["requests_num"])


class Template:
    """A real record's bytes, re-issued under fresh executionIds."""

    def __init__(self, request_bytes: int) -> None:
        rt = IntentusRuntime(registry, worker_id="bench-store")
        try:
            body = envelope_template(request_bytes).replace(b"@RID@", b"bench-store-template")
            ctx = RequestContext(correlation_id="bench-store-correlation", user_id=USER)
            rt.route_intent(body, ctx)
            self.execution_id = next(iter(rt.store.ids()))
            data = rt.store.get(self.execution_id)
            assert data is not None
            self.data = data
        finally:
            rt.close()
        self.fingerprint = str(json.loads(self.data)["header"]["fingerprint"])

    def make(self, n: int) -> list[tuple[str, bytes]]:
        old = self.execution_id.encode()
        out = []
        for _ in range(n):
            eid = "exec-" + secrets.token_hex(12)
            out.append((eid, self.data.replace(old, eid.encode())))
        return out


def drive(
    store: RecordStore, records: list[tuple[str, bytes]], *, threads: int, fingerprint: str
) -> tuple[float, float, list[float]]:
    """Claim, commit and release every record on `threads` threads: wall seconds, this
    process's CPU seconds, and the summed seconds spent in each phase."""
    shares = [records[i::threads] for i in range(threads)]
    phases = [[0.0, 0.0, 0.0] for _ in range(threads)]
    errors: list[BaseException] = []
    gate = threading.Barrier(threads + 1)

    def run(i: int) -> None:
        clock = time.perf_counter
        spent = phases[i]
        gate.wait()
        try:
            for eid, data in shares[i]:
                t0 = clock()
                claim = store.claim(eid, user_id=USER, fingerprint=fingerprint)
                if not claim.won:
                    raise RuntimeError(f"claim of fresh {eid} not won: {claim.state}")
                t1 = clock()
                store.put(eid, data)
                t2 = clock()
                store.release(claim)
                t3 = clock()
                spent[0] += t1 - t0
                spent[1] += t2 - t1
                spent[2] += t3 - t2
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    cpu0 = time.process_time()
    gate.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    if errors:
        raise errors[0]
    return elapsed, cpu, [sum(p[k] for p in phases) for k in range(3)]


def _db_url(server_url: str, database: str) -> str:
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{database}"))


@contextmanager
def temporary_database(server_url: str) -> Iterator[str]:
    """A fresh database on the server; its URL; dropped afterwards, sessions and all."""
    import psycopg

    name = f"intentus_bench_{secrets.token_hex(6)}"
    with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield _db_url(server_url, name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class ServerCpu:
    """CPU seconds of the server sessions on one database (a local server: /proc)."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.database = urlsplit(url).path.lstrip("/")
        self._conn = psycopg.connect(url, autocommit=True)
        self._own = self._conn.info.backend_pid

    def sample(self) -> dict[int, float] | None:
        rows = self._conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> %s",
            (self.database, self._own),
        ).fetchall()
        out = {}
        for (pid,) in rows:
            try:
                out[pid] = cpu_seconds(pid)
            except OSError:
                return None  # not a local server, or not ours to read
        return out

    @staticmethod
    def spent(before: dict[int, float] | None, after: dict[int, float] | None) -> float | None:
        if before is None or after is None:
            return None
        # A session opened during the run counts from zero; one closed during it is lost
        # (the pool keeps its connections for the whole run).
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())

    def close(self) -> None:
        self._conn.close()


def measure(
    backend: str,
    opener: Callable[[], RecordStore],
    *,
    template: Template,
    args: argparse.Namespace,
    pg_url: str | None = None,
) -> Result:
    store = opener()
    server = ServerCpu(pg_url) if pg_url else None
    try:
        # Warm up on all threads: pool connections, shard folders, caches.
        warmup = template.make(max(args.threads, args.n // 10))
        drive(store, warmup, threads=args.threads, fingerprint=template.fingerprint)
        pool = getattr(store, "pool", None)
        if pool is not None:
            pool.pop_stats()
        counts = getattr(store, "counts", None)
        before = dict(counts) if counts is not None else {}
        cpu_before = server.sample() if server else None
        records = template.make(args.n)
        seconds, cpu, phases = drive(
            store, records, threads=args.threads, fingerprint=template.fingerprint
        )
        cpu_after = server.sample() if server else None
        stats = dict(pool.pop_stats()) if pool is not None else {}
        spent = {k: v - before[k] for k, v in counts.items()} if counts is not None else {}
    finally:
        store.close()
        if server is not None:
            server.close()
    n = len(records)
    return Result(
        backend=backend,
        records=n,
        seconds=seconds,
        cpu_s=cpu,
        claim_us=phases[0] / n * 1e6,
        commit_us=phases[1] / n * 1e6,
        release_us=phases[2] / n * 1e6,
        server_cpu_s=ServerCpu.spent(cpu_before, cpu_after) if server else None,
        pool={k: int(stats.get(k, 0)) for k in ("requests_num", "requests_queued")}
        if pool is not None
        else {},
        counts=spent,
    )


def run_backend(backend: str, template: Template, args: argparse.Namespace) -> Result:
    owner = new_owner_token("bench-store")
    if backend == "memory":
        return measure(backend, lambda: MemoryRecordStore(owner), template=template, args=args)
    if backend == "files":
        base = Path(args.records_dir) if args.records_dir else ROOT / ".intentusnet" / "bench"
        folder = base / f"store-{secrets.token_hex(6)}"
        folder.mkdir(parents=True)
        try:
            return measure(
                backend,
                lambda: FileRecordStore(folder, owner=owner),
                template=template,
                args=args,
            )
        finally:
            remove_later(folder)  # at the end of the run (see bench/spent.py)
    from runtime.stores.postgres import PostgresRecordStore

    def pg(url: str) -> Result:
        return measure(
            backend,
            # Sized as the worker sizes it: one connection per routing thread, plus two.
            lambda: PostgresRecordStore(url, owner=owner, pool_size=args.threads + 2),
            template=template,
            args=args,
            pg_url=url,
        )

    if args.pg_database:
        return pg(args.pg_database)
    with temporary_database(args.pg_url) as url:
        return pg(url)


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "runtime"], capture_output=True, cwd=ROOT
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _f(value: float | None, digits: int = 0) -> str:
    return "" if value is None else f"{value:.{digits}f}"


COLUMNS = (
    "records/s",
    "µs/record",
    "µs x memory",
    "µs x files",
    "client CPU µs/rec",
    "server CPU µs/rec",
    "claim µs",
    "commit µs",
    "release µs",
    "checkouts/rec",
    "claims/stmt",
    "recs/stmt",
    "pool waits %",
)


def row(r: Result, memory: Result | None, files: Result | None) -> list[str]:
    return [
        _f(r.per_s),
        _f(r.us, 1),
        _f(r.us / memory.us, 1) if memory else "",
        _f(r.us / files.us, 2) if files else "",
        _f(r.cpu_us, 1),
        _f(r.server_cpu_us, 1),
        _f(r.claim_us, 1),
        _f(r.commit_us, 1),
        _f(r.release_us, 1),
        _f(r.checkouts, 2),
        _f(r.per_claim, 1),
        _f(r.per_commit, 1),
        _f(r.waited, 1),
    ]


def print_tables(results: list[tuple[int, Result]]) -> None:
    print()
    print("| round | backend | " + " | ".join(COLUMNS) + " |")
    print("|---|---|" + "---:|" * len(COLUMNS))
    by_round: dict[int, dict[str, Result]] = {}
    for rnd, r in results:
        by_round.setdefault(rnd, {})[r.backend] = r
    cells: dict[str, list[list[str]]] = {}
    for rnd, got in by_round.items():
        for backend, r in got.items():
            cols = row(r, got.get("memory"), got.get("files"))
            cells.setdefault(backend, []).append(cols)
            print(f"| {rnd} | {backend} | " + " | ".join(cols) + " |")
    print()
    print("Medians over rounds:")
    print("| backend | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for backend, rows in cells.items():
        meds = []
        for k in range(len(COLUMNS)):
            vals = [float(c[k]) for c in rows if c[k]]
            digits = len(rows[0][k].partition(".")[2]) if rows[0][k] else 0
            meds.append(_f(statistics.median(vals), digits) if vals else "")
        print(f"| {backend} | " + " | ".join(meds) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=4000, help="records per backend and round")
    ap.add_argument("--threads", type=int, default=8, help="concurrent claim-commit threads")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--backends", default=",".join(BACKENDS), help=f"any of {', '.join(BACKENDS)}")
    ap.add_argument("--size", type=int, default=600, help="bytes of the request recorded")
    ap.add_argument("--records-dir", help="folder for the files backend's temporary stores")
    ap.add_argument(
        "--pg-url",
        default=PG_URL,
        help="PostgreSQL server on which a temporary database is created (default: %(default)s)",
    )
    ap.add_argument(
        "--pg-database", help="use this existing database as it is, instead of a temporary one"
    )
    args = ap.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in BACKENDS:
            ap.error(f"unknown backend {b!r}")
    if args.n < args.threads or args.threads < 1:
        ap.error("--n must be at least --threads, and --threads at least 1")

    template = Template(args.size)
    print(f"command: {shlex.join([os.path.relpath(sys.executable), *sys.argv])}")
    print(
        f"date: {time.strftime('%Y-%m-%d %H:%M')}  commit: {commit()}"
        f"  python: {platform.python_version()}  cpus: {os.cpu_count()}"
        f"  load: {os.getloadavg()[0]:.1f}  record: {len(template.data)} bytes"
        f"  threads: {args.threads}  records: {args.n}"
    )
    results: list[tuple[int, Result]] = []
    for rnd in range(1, args.rounds + 1):
        for backend in backends:
            r = run_backend(backend, template, args)
            results.append((rnd, r))
            print(
                f"round {rnd} {backend:8} {r.per_s:8.0f} records/s  {r.us:8.1f} µs/record"
                f"  client CPU {r.cpu_us:7.1f} µs/record",
                flush=True,
            )
    print_tables(results)


if __name__ == "__main__":
    main()
