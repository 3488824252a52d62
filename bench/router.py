"""µs per `route_intent` (DIRECT, one no-op agent), with same-run baselines.

    .venv/bin/python bench/router.py [--n N] [--durable-n N] [--threads 8] [--repeat 3]

Rows: a bare function call, a bare thread hand-off (the floor `route_intent` pays to enforce a
deadline: its handlers run on another thread), seed-style routing (validate, order, call inline,
no record, no timeout), then the runtime with the memory store (`route_intent`, and
`process_inline`, the worker's path: handler inline, deadline kept by the watchdog), the durable
file store on one thread, and the durable file store with N threads routing concurrently
(amortised: wall time / total requests). Each figure is the best of `--repeat` runs; the machine is shared and noisy,
so compare the ratios more than the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from _thread import allocate_lock
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime import AgentRegistry, IntentEnvelope, IntentusRuntime
from runtime.ordering import compute_ordering


def noop(envelope: Any) -> dict[str, Any]:
    return {}


def request(i: int, tag: str) -> bytes:
    return json.dumps(
        {
            "version": "1.0",
            "intent": {"name": "BenchIntent"},
            "payload": {"document_id": f"doc-{i}"},
            "metadata": {"requestId": f"{tag}-{i}"},
        }
    ).encode()


def best(repeat: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(repeat))


def per_op(n: int, fn: Callable[[int], Any]) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n * 1e6


def bare_call(n: int) -> float:
    return per_op(n, lambda i: noop(None))


def thread_handoff(n: int) -> float:
    jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def worker() -> None:
        while (job := jobs.get()) is not None:
            lock, fn = job
            fn(None)
            lock.release()

    t = threading.Thread(target=worker, daemon=True)
    t.start()

    def once(i: int) -> None:
        lock = allocate_lock()
        lock.acquire()
        jobs.put((lock, noop))
        lock.acquire(timeout=30)

    try:
        return per_op(n, once)
    finally:
        jobs.put(None)


def seed_style(n: int, registry: AgentRegistry) -> float:
    """What the seed runtime does with recording off: validate, sort, call inline, answer."""
    bodies = [request(i, "seed") for i in range(n)]
    agents = list(registry)

    def once(i: int) -> None:
        env = IntentEnvelope.model_validate_json(bodies[i])
        matching = [a for a in agents if a.handles(env.intent.name, env.intent.version)]
        agent = compute_ordering(matching)[0]
        payload = agent.handler(env)
        json.dumps({"status": "success", "payload": payload, "agent": agent.name})

    return per_op(n, once)


def runtime_single(n: int, registry: AgentRegistry, records_dir: str | None, tag: str) -> float:
    rt = IntentusRuntime(registry, records_dir, worker_id=f"bench-{tag}")
    bodies = [request(i, tag) for i in range(n)]
    try:
        rt.route_intent(request(-1, tag))  # warm up: threads, caches, folders
        return per_op(n, lambda i: rt.route_intent(bodies[i]))
    finally:
        rt.close()


def worker_path(n: int, registry: AgentRegistry, tag: str) -> float:
    """What a worker's routing thread does per request: `process_inline` (handler on this
    thread, the watchdog keeping its deadline), then the memory store's commit."""
    rt = IntentusRuntime(registry, None, worker_id=f"bench-{tag}")
    bodies = [request(i, tag) for i in range(n)]
    done = rt.commit_sync
    try:
        rt.process_inline(request(-1, tag), deliver=done)
        return per_op(n, lambda i: rt.process_inline(bodies[i], deliver=done))
    finally:
        rt.close()


def runtime_threads(
    n: int, threads: int, registry: AgentRegistry, records_dir: str, tag: str
) -> float:
    rt = IntentusRuntime(registry, records_dir, worker_id=f"bench-{tag}")
    per = n // threads
    bodies = [[request(t * per + i, tag) for i in range(per)] for t in range(threads)]
    rt.route_intent(request(-1, tag))
    gate = threading.Barrier(threads + 1)

    def run(mine: list[bytes]) -> None:
        gate.wait()
        for b in mine:
            rt.route_intent(b)

    pool = [threading.Thread(target=run, args=(b,)) for b in bodies]
    for t in pool:
        t.start()
    gate.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    rt.close()
    return elapsed / (per * threads) * 1e6


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain", "runtime"], capture_output=True)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="requests per in-memory run")
    parser.add_argument("--durable-n", type=int, default=1600, help="requests per durable run")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--records-dir", help="where durable runs write (default: a temp dir)")
    args = parser.parse_args()

    registry = AgentRegistry()
    registry.register("noop", noop, intents=["BenchIntent"])
    base = args.records_dir or tempfile.mkdtemp(prefix="intentus-bench-")
    counter = iter(range(10**6))

    def fresh_dir() -> str:
        path = os.path.join(base, f"run-{next(counter)}")
        os.makedirs(path)
        return path

    def tag() -> str:
        return f"t{next(counter)}"

    n, dn, r = args.n, args.durable_n, args.repeat
    rows = [
        ("baseline: bare function call", best(r, lambda: bare_call(n * 10)), None),
        ("baseline: thread hand-off (timeout floor)", best(r, lambda: thread_handoff(n)), None),
        ("baseline: seed-style routing, no record", best(r, lambda: seed_style(n, registry)), None),
        (
            "route_intent, memory store, 1 thread",
            best(r, lambda: runtime_single(n, registry, None, tag())),
            40.0,
        ),
        (
            "process_inline (the worker's path), memory store, 1 thread",
            best(r, lambda: worker_path(n, registry, tag())),
            40.0,
        ),
        (
            "route_intent, durable file store, 1 thread",
            best(r, lambda: runtime_single(dn // 4, registry, fresh_dir(), tag())),
            None,
        ),
        (
            f"route_intent, durable file store, {args.threads} threads (amortised)",
            best(r, lambda: runtime_threads(dn, args.threads, registry, fresh_dir(), tag())),
            64.0,
        ),
    ]
    handoff = rows[1][1]
    seed = rows[2][1]
    print(f"command: {shlex.join([os.path.relpath(sys.executable), *sys.argv])}")
    print(
        f"date: {time.strftime('%Y-%m-%d')}  commit: {commit()}  python: {platform.python_version()}"
        f"  cpus: {os.cpu_count()}"
    )
    print(f"{'case':<58} {'µs/op':>9} {'x hand-off':>11} {'x seed':>8} {'target':>8}")
    for name, value, target in rows:
        verdict = "" if target is None else ("met" if value <= target else f"> {target:g}")
        print(
            f"{name:<58} {value:>9.1f} {value / handoff:>11.2f} {value / seed:>8.2f} {verdict:>8}"
        )


if __name__ == "__main__":
    main()
