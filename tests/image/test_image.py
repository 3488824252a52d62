"""The container image users run, built from deploy/Dockerfile and started with podman."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.load import Collector, Publisher, request
from tests.image.podman import Container, Podman
from tests.support.broker import AMQP_URL
from worker.clients.blocking import IntentusClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def uid_of(pid: int) -> int:
    """The real uid of a host process, from /proc (rootful podman maps uids one to one)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def test_image_config(image: Podman) -> None:
    """Built: runs `intentus worker` as uid 10001, with its liveness check on /healthz."""
    raw = image.run("image", "inspect", image.image).stdout
    (config,) = json.loads(raw)
    cfg = config["Config"]
    assert cfg["User"] == "10001:10001"
    assert [*cfg["Entrypoint"], *cfg["Cmd"]] == ["intentus", "worker"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert "/healthz" in config["Healthcheck"]["Test"][-1]
    assert any(e.startswith("INTENTUS_METRICS_ADDR=0.0.0.0:") for e in cfg["Env"])


def test_answers_an_intent_as_non_root(
    containers: Callable[..., Container], queue_name: str
) -> None:
    """Started with the image's defaults (demo agents, file records): a non-root process that
    is ready and answers an intent sent from the host with the project's client."""
    c = containers().wait_ready()
    assert c.http("/readyz")[0] == 200
    assert uid_of(c.host_pid()) == 10001
    # The image's HEALTHCHECK command (runs are started without podman's timers) passes.
    (config,) = json.loads(c.podman.run("image", "inspect", c.podman.image).stdout)
    c.podman.run("exec", c.name, *config["Healthcheck"]["Test"][1:])
    with IntentusClient(AMQP_URL, queue=queue_name, source="image-test") as client:
        reply = client.send_intent("ProcessIntent", {"hello": "image"}, timeout=30)
    assert reply.ok, reply
    assert reply.payload is not None and reply.payload["echo"] == {"hello": "image"}
    listed = c.podman.run("exec", c.name, "intentus", "records", "list").stdout
    assert "ProcessIntent" in listed


def test_stop_drains_and_exits_0(containers: Callable[..., Container], queue_name: str) -> None:
    """`podman stop` while requests run: each gets its reply, the container exits 0."""
    c = containers().wait_ready()
    collector = Collector(f"{queue_name}.replies")
    try:
        messages = [request("SlowIntent", {"seconds": 3}, collector.queue) for _ in range(3)]
        publisher = Publisher(queue_name)
        publisher.publish_all(messages)
        publisher.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and c.inflight() < len(messages):
            time.sleep(0.1)
        assert c.inflight() == len(messages), c.logs()
        assert c.stop(grace_s=60) == 0, c.logs()
        cids = {m.correlation_id for m in messages}
        assert collector.wait_for(cids, timeout=10), c.logs()
        codes = {collector.first(cid).code for cid in cids}  # type: ignore[union-attr]
        assert codes == {None}, codes
    finally:
        collector.stop()
