"""Slow-agent benchmark: agents that wait on a simulated 1 s backend call, 1,000 in flight.

Contenders, each on its own quorum queue, file records where it keeps any:

- `async`: this worker, the agent an `async def` awaiting the call (defaults otherwise:
  concurrency 8, the prefetch an async agent gets, 1024);
- `sync-8`, `sync-64`: this worker, the same agent as a blocking function, at the default
  concurrency and at 64 (prefetch 128);
- `faststream`: a FastStream RabbitMQ subscriber awaiting the same call (prefetch 1,000, no
  records; skipped unless `faststream[rabbit]` is installed).

The sync contenders get fewer requests (they answer 8 or 64 a second); every contender gets
the same window. `--latency 0.2-3.0` spreads each request's wait over that range.

    python -m bench.slow                       # 5,000 requests, 1,000 in flight, 1 s agent
    python -m bench.slow --latency 0.2-3.0 --json results.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import uuid
from importlib.util import find_spec
from typing import Any

from bench.e2e import PY, ROOT, Contender, _admin, _cleanup
from bench.loadgen import LoadGen, Result, find_broker_pid, rss_bytes

SYNC_SHARE = {"sync-8": 0.05, "sync-64": 0.3}  # of --n: what they answer in a sensible time


def _env(kind: str, spec: str) -> dict[str, str]:
    env = {"BENCH_AGENT_LATENCY": spec}
    if kind == "async":
        env["INTENTUS_AGENTS"] = "bench.slow_agents:async_registry"
    else:
        env["INTENTUS_AGENTS"] = "bench.slow_agents:sync_registry"
        if kind == "sync-64":
            env.update(INTENTUS_CONCURRENCY="64", INTENTUS_PREFETCH="128")
    return env


def _measure(pid: int, queue: str, n: int, window: int) -> tuple[Result, int]:
    watch = {"worker": pid}
    broker = find_broker_pid()
    if broker:
        watch["broker"] = broker
    gen = LoadGen(
        queue, n, window, warmup=min(window, n // 5), watch=watch, rss_pid=pid, rss_every=250
    )
    result = gen.run()
    peak = max([rss for _n, rss in result.rss_series] + [rss_bytes(pid)])
    return result, peak


def run_worker(kind: str, spec: str, n: int, window: int) -> tuple[Result, int]:
    contender = Contender("file", f"slow-{kind}", extra_env=_env(kind, spec))
    try:
        return _measure(contender.start(), contender.queue, n, window)
    finally:
        contender.stop()


def run_faststream(spec: str, n: int, window: int) -> tuple[Result, int]:
    queue = f"bench.slow.faststream.{uuid.uuid4().hex[:8]}"
    _admin(lambda ch: ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"}))
    proc = subprocess.Popen(
        [PY, "-m", "bench.faststream_peer", "--queue", queue, "--prefetch", str(window)],
        cwd=ROOT,
        env={"BENCH_AGENT_LATENCY": spec, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # FastStream logs to stdout too
            if line.strip() == b"ready":
                break
        else:
            raise RuntimeError("the FastStream peer did not start")
        return _measure(proc.pid, queue, n, window)
    finally:
        proc.terminate()
        proc.wait(30)
        _cleanup(queue)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-n", type=int, default=5000, help="requests (async and FastStream)")
    ap.add_argument("-w", "--window", type=int, default=1000, help="requests in flight")
    ap.add_argument("--latency", default="1.0", help="the agent's wait: 1.0, or a range 0.2-3.0")
    ap.add_argument("--contenders", default="async,faststream,sync-8,sync-64")
    ap.add_argument("--json", help="write the rows to this file")
    a = ap.parse_args()
    rows: list[dict[str, Any]] = []
    for kind in a.contenders.split(","):
        n = max(100, int(a.n * SYNC_SHARE.get(kind, 1.0)))
        if kind == "faststream":
            if find_spec("faststream") is None:
                print("faststream: not installed (pip install 'faststream[rabbit]'); skipped")
                continue
            result, peak = run_faststream(a.latency, n, a.window)
        else:
            result, peak = run_worker(kind, a.latency, n, a.window)
        cpu_us = result.cpu_s.get("worker", 0.0) / max(1, result.measured) * 1e6
        print(f"{kind:10} {result.line()}  rss {peak / 2**20:.0f} MiB  {cpu_us:.0f} µs/req")
        rows.append(
            {
                "contender": kind,
                "latency": a.latency,
                "window": a.window,
                "n": n,
                "msgs_per_s": result.msgs_per_s,
                "p50_ms": result.p50_ms,
                "p99_ms": result.p99_ms,
                "lost": result.lost,
                "rss_mib": peak / 2**20,
                "worker_cpu_us_per_req": cpu_us,
            }
        )
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump({"rows": rows}, fh, indent=2)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
