"""Scenario 10: soak under a mix of all strategies and bad inputs; RSS and fds stay flat."""

from __future__ import annotations

import random
import statistics
import threading
import time
import uuid

import pytest

from tests.faults.load import Message, Publisher, figures, proc_sample, report, request

pytestmark = pytest.mark.integration

RATE = 150  # messages per second: a steady load the 2-core machine sustains


def mixed(i: int, rng: random.Random, reply_to: str) -> Message:
    kind = i % 8
    if kind in (0, 1, 2):
        return request("ProcessIntent", {"n": i}, reply_to)
    if kind == 3:
        return request("MixIntent", {"n": i}, reply_to, strategy="FALLBACK")
    if kind == 4:
        return request("MixIntent", {"n": i}, reply_to, strategy="BROADCAST")
    if kind == 5:
        return request("MixIntent", {"n": i}, reply_to, strategy="PARALLEL")
    cid = uuid.uuid4().hex
    if kind == 6:
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200)))
    else:
        body = b'{"version": "1.0", "intent": {"name": ""}, "bogus": ' + str(i).encode() + b"}"
    return Message(body, correlation_id=cid, request_id=f"bad-{cid}", reply_to=reply_to)


def run_soak(scenario, start_worker, replies, exec_log, agent_env, queue_name, seconds) -> None:
    w = start_worker(env=agent_env)
    assert w.proc is not None
    pid = w.proc.pid
    rng = random.Random(10)
    messages = [mixed(i, rng, replies.queue) for i in range(int(seconds * RATE))]
    publisher = Publisher(queue_name)
    t = threading.Thread(target=publisher.publish_all, args=(messages, RATE), daemon=True)
    samples: list[tuple[float, int, int]] = []
    started = time.monotonic()
    t.start()
    interval = max(2.0, seconds / 30)
    while t.is_alive():
        rss, fds = proc_sample(pid)
        samples.append((round(time.monotonic() - started, 1), rss, fds))
        t.join(timeout=interval)
    cids = {m.correlation_id for m in messages}
    complete = replies.wait_for(cids, timeout=120, idle_timeout=60)
    rss, fds = proc_sample(pid)
    samples.append((round(time.monotonic() - started, 1), rss, fds))
    publisher.close()
    # Flatness: after a warm-up of a fifth of the run, compare the first and last thirds.
    steady = [s for s in samples if s[0] >= seconds / 5] or samples
    third = max(1, len(steady) // 3)
    rss_first = statistics.median(s[1] for s in steady[:third])
    rss_last = statistics.median(s[1] for s in steady[-third:])
    # A sample can catch the record committer mid-batch, holding one file per record of the
    # batch (bounded by the prefetch): a leak shows as a rising median, not as one spike.
    fd_first = statistics.median(s[2] for s in steady[:third])
    fd_last = statistics.median(s[2] for s in steady[-third:])
    fd_peak = max(s[2] for s in samples)
    fig = report(
        figures(
            scenario,
            messages,
            replies,
            exec_log,
            seconds=seconds,
            rate_per_s=RATE,
            rss_mib_series=[round(s[1] / 2**20, 1) for s in samples],
            fd_series=[s[2] for s in samples],
            sample_times_s=[s[0] for s in samples],
            rss_mib_steady_first_third=round(rss_first / 2**20, 1),
            rss_mib_steady_last_third=round(rss_last / 2**20, 1),
            fds_steady_first_third=fd_first,
            fds_steady_last_third=fd_last,
        )
    )
    assert complete and fig["lost"] == 0, fig
    assert fig["executed_twice"] == 0 and fig["inconsistent_replies"] == 0, fig
    assert fd_last - fd_first <= 5, fig
    assert fd_peak <= 32 + 2 * 64, fig  # the default prefetch bounds records in flight
    assert rss_last - rss_first <= max(0.10 * rss_first, 8 * 2**20), fig
    assert w.stop() == 0


def test_soak_fast(start_worker, replies, exec_log, agent_env, queue_name):
    """60 s at 150 msg/s."""
    run_soak("10-soak-fast", start_worker, replies, exec_log, agent_env, queue_name, 60)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_soak_full(start_worker, replies, exec_log, agent_env, queue_name):
    """10 minutes at 150 msg/s."""
    run_soak("10-soak-full", start_worker, replies, exec_log, agent_env, queue_name, 600)
