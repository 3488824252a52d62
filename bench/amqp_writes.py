"""CPU per published reply: pika's connection (one socket write per frame) against the worker's
`BatchedSelectConnection` (one write per I/O-loop turn), in the same run.

    .venv/bin/python -m bench.amqp_writes [--n 20000] [--burst 64] [--rounds 3]

Each contender opens a connection to the broker, puts its channel in confirm mode and publishes
`--n` persistent 700-byte messages with two headers (the shape of a worker's reply) to a
transient queue of its own, `--burst` per loop turn (as the worker's mailbox hands over a burst
of replies), the next burst once the previous one is confirmed. It prints this process's CPU
(user + system) and the broker's per message, and the socket writes per message. Rounds
alternate the contenders (A B A B); the summary is the median ratio batched / pika.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from typing import Any

import pika

from bench.loadgen import cpu_seconds, find_broker_pid
from worker.amqp.batched import BatchedSelectConnection

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(kind: str, n: int, burst: int) -> dict[str, Any]:
    cls = BatchedSelectConnection if kind == "batched" else pika.SelectConnection
    body = b"x" * 700
    props = pika.BasicProperties(
        content_type="application/json",
        correlation_id="c" * 36,
        type="AgentResponse",
        headers={"x-intentus-status": "success", "x-intentus-execution-id": "exec-" + "0" * 24},
        delivery_mode=2,
    )
    broker = find_broker_pid()
    state: dict[str, Any] = {"sent": 0, "confirmed": 0, "queue": None}
    conn_box: list[Any] = []

    def on_open(conn: Any) -> None:
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch: Any) -> None:
        state["ch"] = ch
        ch.queue_declare("", exclusive=True, callback=lambda f: on_queue(ch, f))

    def on_queue(ch: Any, frame: Any) -> None:
        state["queue"] = frame.method.queue
        ch.confirm_delivery(ack_nack_callback=on_confirm, callback=lambda _f: start())

    def start() -> None:
        state["t0"] = time.perf_counter()
        state["cpu0"] = _cpu()
        state["broker0"] = cpu_seconds(broker) if broker else 0.0
        send_burst()

    def send_burst() -> None:
        ch = state["ch"]
        for _ in range(min(burst, n - state["sent"])):
            ch.basic_publish("", state["queue"], body, props, mandatory=True)
            state["sent"] += 1

    def on_confirm(frame: Any) -> None:
        tag = frame.method.delivery_tag
        state["confirmed"] = tag if frame.method.multiple else max(state["confirmed"], tag)
        if state["confirmed"] >= n:
            state["cpu"] = _cpu() - state["cpu0"]
            state["broker"] = (cpu_seconds(broker) - state["broker0"]) if broker else 0.0
            state["secs"] = time.perf_counter() - state["t0"]
            conn_box[0].close()
        elif state["confirmed"] >= state["sent"]:
            send_burst()

    conn = cls(
        pika.URLParameters(URL),
        on_open_callback=on_open,
        on_close_callback=lambda c, r: c.ioloop.stop(),
    )
    conn_box.append(conn)
    conn.ioloop.start()
    writes = getattr(conn, "writes", None)
    return {
        "kind": kind,
        "cpu_us": state["cpu"] / n * 1e6,
        "broker_us": state["broker"] / n * 1e6,
        "msgs_s": n / state["secs"],
        "writes_per_msg": (writes / n) if writes is not None else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--burst", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cmd = "python -m bench.amqp_writes " + " ".join(sys.argv[1:])
    print(f"command: {cmd}  (pid {os.getpid()})")
    ratios = []
    for r in range(args.rounds):
        results = {k: run(k, args.n, args.burst) for k in ("pika", "batched")}
        for res in results.values():
            wpm = res["writes_per_msg"]
            print(
                f"round {r + 1} {res['kind']:8s} {res['msgs_s']:8.0f} msg/s  "
                f"client CPU {res['cpu_us']:6.1f} µs/msg  broker CPU {res['broker_us']:6.1f} µs/msg"
                + (f"  writes/msg {wpm:.3f}" if wpm is not None else "")
            )
        ratios.append(results["batched"]["cpu_us"] / results["pika"]["cpu_us"])
    print(f"median client CPU ratio batched / pika: {statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
