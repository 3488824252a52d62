"""`intentus dlq list|show|requeue|purge` as a subprocess against the real broker."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
import pytest

from tests.faults.brokerctl import TempUser, require_rabbitmqctl
from tests.integration.conftest import Agents
from tests.integration.wire import Wire, body_of, envelope, wait_for
from tests.support.broker import AMQP_URL, get_all, queue_depth
from tests.support.workerproc import ROOT, WorkerProcess
from worker.amqp import DeadLetterQueue, declare_topology
from worker.config import Config

pytestmark = pytest.mark.integration

INTENTUS = str(Path(sys.executable).parent / "intentus")


def dlq(queue: str, *args: str, stdin: int | None = subprocess.DEVNULL) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTENTUS_")}
    env.update({"INTENTUS_AMQP_URL": AMQP_URL, "INTENTUS_QUEUE": queue})
    done = subprocess.run(
        [INTENTUS, "dlq", *args],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        stdin=stdin,
        timeout=60,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def listed(queue: str) -> list[dict[str, Any]]:
    code, out, err = dlq(queue, "list", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert isinstance(rows, list)
    return rows


def dead_letter(wire: Wire, queue: str, rid: str, reason: str | None, **props: Any) -> None:
    """A dead letter as the worker (with `reason`) or the broker (without) leaves it."""
    headers: dict[str, Any] = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
    if reason is None:
        headers["x-death"] = [{"reason": "delivery_limit", "queue": queue, "count": 1}]
    else:
        headers.update(
            {
                "x-intentus-reject-reason": reason,
                "x-intentus-execution-id": f"exec-{rid}",
                "x-intentus-original-queue": queue,
                "x-intentus-dead-lettered-at": 1_700_000_000,
            }
        )
    wire.publish(
        f"{queue}.dlq",
        props.pop("body", None) or body_of(envelope(request_id=rid)),
        correlation_id=f"cid-{rid}",
        headers=headers,
        **props,
    )


@pytest.fixture
def topology(queue_name: str) -> str:
    """The worker's own topology on a unique queue, with no worker consuming it."""
    declare_topology(Config(amqp_url=AMQP_URL, queue=queue_name, reply_queue=""))
    return queue_name


@pytest.fixture
def wire(topology: str) -> Any:
    w = Wire()
    yield w
    w.close()


class TestList:
    def test_lists_what_the_worker_dead_lettered_and_leaves_it_there(
        self, start_worker: Callable[..., WorkerProcess], queue_name: str
    ) -> None:
        """The worker's own dead letters show reason, requestId and age, and stay in the DLQ."""
        worker = start_worker()
        wire = Wire()
        try:
            bad = envelope(request_id="rid-invalid")
            del bad["intent"]
            wire.publish(queue_name, body_of(bad), correlation_id="cid-invalid")
            wire.publish(queue_name, b"not json", message_id="mid-garbage")
            assert wait_for(lambda: queue_depth(f"{queue_name}.dlq") == 2, timeout=20)
        finally:
            wire.close()
        worker.stop()
        rows = {r["requestId"]: r for r in listed(queue_name)}
        assert set(rows) == {"rid-invalid", "mid-garbage"}
        assert rows["rid-invalid"]["reason"].startswith("VALIDATION_ERROR")
        assert rows["mid-garbage"]["reason"].startswith("PROTOCOL_ERROR")
        for row in rows.values():
            assert 0 <= row["ageSeconds"] < 120
        code, out, _err = dlq(queue_name, "list")
        assert code == 0
        assert out.splitlines()[0].split() == ["AGE", "REQUEST", "ID", "REASON"]
        assert queue_depth(f"{queue_name}.dlq") == 2

    def test_order_and_contents_survive_repeated_looks(self, wire: Wire, topology: str) -> None:
        """Listing twice shows the same messages in the same order; nothing is consumed."""
        for i in range(5):
            dead_letter(wire, topology, f"rid-{i}", "VALIDATION_ERROR: bad")
        first = [r["requestId"] for r in listed(topology)]
        second = [r["requestId"] for r in listed(topology)]
        assert first == second == [f"rid-{i}" for i in range(5)]
        assert queue_depth(f"{topology}.dlq") == 5

    def test_messages_held_elsewhere_are_not_seen_and_come_back(
        self, wire: Wire, topology: str
    ) -> None:
        """While another reader holds messages unacked, list sees the rest; closing returns them."""
        for i in range(4):
            dead_letter(wire, topology, f"rid-{i}", "VALIDATION_ERROR: x")
        other = DeadLetterQueue(Config(amqp_url=AMQP_URL, queue=topology))
        try:
            held = other.take(2)
            assert len(held) == 2
            assert [r["requestId"] for r in listed(topology)] == ["rid-2", "rid-3"]
        finally:
            other.close()
        assert sorted(r["requestId"] for r in listed(topology)) == [f"rid-{i}" for i in range(4)]

    def test_broker_dead_letters_fall_back_to_x_death_and_message_id(
        self, wire: Wire, topology: str
    ) -> None:
        """A poison message shows the broker's reason; an unreadable body its message_id."""
        dead_letter(wire, topology, "x", None, body=b"\xff\xfe", message_id="mid-poison")
        (row,) = listed(topology)
        assert row["reason"] == "broker:delivery_limit"
        assert row["requestId"] == "mid-poison"

    def test_control_characters_are_escaped_in_the_table_not_in_json(
        self, wire: Wire, topology: str
    ) -> None:
        """A requestId, message_id or reason carrying NUL, ESC, a newline or a C1 control
        prints escaped in the table (raw, it would garble the terminal or forge a row);
        --json keeps the exact strings."""
        rid = "rid-\x00\x1b[2J\nFAKE\r\x7f\x9b-end"
        reason = "VALIDATION_ERROR: bad\x07\tvalue"
        mid = "mid-\x00\x01"
        dead_letter(wire, topology, rid, reason)
        dead_letter(wire, topology, "x", None, body=b"\xff\xfe", message_id=mid)
        rows = listed(topology)
        assert [(r["requestId"], r["reason"]) for r in rows] == [
            (rid, reason),
            (mid, "broker:delivery_limit"),
        ]
        code, out, err = dlq(topology, "list")
        assert code == 0, err
        lines = out.split("\n")
        assert lines.pop() == ""
        assert len(lines) == 3
        assert all(ch.isprintable() for line in lines for ch in line)
        assert [line.split(maxsplit=2)[1:] for line in lines[1:]] == [
            [r"rid-\x00\x1b[2J\nFAKE\r\x7f\x9b-end", r"VALIDATION_ERROR: bad\x07\tvalue"],
            [r"mid-\x00\x01", "broker:delivery_limit"],
        ]
        code, out, err = dlq(topology, "show", "cid-x")
        assert code == 0, err
        assert "requestId: mid-\\x00\\x01\n" in out
        assert '  message_id: "mid-\\u0000\\u0001"\n' in out

    def test_empty_queue(self, topology: str) -> None:
        """An empty DLQ says so and lists an empty JSON array."""
        assert listed(topology) == []
        code, out, _err = dlq(topology, "list")
        assert (code, out) == (0, f"{topology}.dlq is empty\n")


class TestShow:
    def test_shows_headers_properties_and_body(self, wire: Wire, topology: str) -> None:
        """One message by requestId with its headers, properties and body; it stays."""
        dead_letter(wire, topology, "rid-a", "VALIDATION_ERROR: nope")
        dead_letter(wire, topology, "rid-b", "PROTOCOL_ERROR: nope")
        code, out, err = dlq(topology, "show", "rid-b", "--json")
        assert code == 0, err
        shown = json.loads(out)
        assert shown["requestId"] == "rid-b"
        assert shown["headers"]["x-intentus-reject-reason"] == "PROTOCOL_ERROR: nope"
        assert shown["properties"]["correlation_id"] == "cid-rid-b"
        assert json.loads(shown["body"])["metadata"]["requestId"] == "rid-b"
        assert shown["deadLetteredAt"] == "2023-11-14T22:13:20+00:00"
        code, out, _err = dlq(topology, "show", "exec-rid-a")
        assert code == 0
        assert 'x-intentus-reject-reason: "VALIDATION_ERROR: nope"' in out
        assert queue_depth(f"{topology}.dlq") == 2

    def test_unknown_id_fails(self, wire: Wire, topology: str) -> None:
        """An id not in the DLQ exits 1 and says so."""
        dead_letter(wire, topology, "rid-a", "VALIDATION_ERROR: nope")
        code, _out, err = dlq(topology, "show", "rid-missing")
        assert code == 1
        assert "no dead letter 'rid-missing'" in err


class TestRequeue:
    def test_by_request_id_moves_only_that_one(self, wire: Wire, topology: str) -> None:
        """The named message goes to the request queue clean of dead-letter headers."""
        for rid in ("rid-1", "rid-2", "rid-3"):
            dead_letter(wire, topology, rid, "VALIDATION_ERROR: x")
        code, out, err = dlq(topology, "requeue", "rid-2")
        assert code == 0, err
        assert "requeued 1 of 1" in out
        assert [r["requestId"] for r in listed(topology)] == ["rid-1", "rid-3"]
        ((_method, props, body),) = get_all(topology)
        assert json.loads(body)["metadata"]["requestId"] == "rid-2"
        assert props.correlation_id == "cid-rid-2"
        assert props.reply_to == wire.reply_queue
        assert props.delivery_mode == 2
        # x-delivery-count, if present, is the request queue's own count of this copy.
        assert set(props.headers) - {"x-delivery-count"} == {"traceparent"}
        assert props.headers.get("x-delivery-count", 0) == 0

    def test_by_reason_glob_and_all(self, wire: Wire, topology: str) -> None:
        """--reason picks by glob; --all takes the rest."""
        dead_letter(wire, topology, "rid-v1", "VALIDATION_ERROR: a")
        dead_letter(wire, topology, "rid-p", "PROTOCOL_ERROR: b")
        dead_letter(wire, topology, "rid-v2", "VALIDATION_ERROR: c")
        dead_letter(wire, topology, "rid-poison", None)
        code, _out, err = dlq(topology, "requeue", "--reason", "VALIDATION_ERROR*")
        assert code == 0, err
        assert queue_depth(topology) == 2
        assert [r["requestId"] for r in listed(topology)] == ["rid-p", "rid-poison"]
        code, _out, err = dlq(topology, "requeue", "--all")
        assert code == 0, err
        assert listed(topology) == []
        bodies = [json.loads(b)["metadata"]["requestId"] for _m, _p, b in get_all(topology)]
        assert bodies == ["rid-v1", "rid-v2", "rid-p", "rid-poison"]

    def test_unroutable_copy_keeps_the_dead_letter(self, wire: Wire, topology: str) -> None:
        """Without a request queue the copy is refused and nothing leaves the DLQ."""
        dead_letter(wire, topology, "rid-1", "VALIDATION_ERROR: x")
        dead_letter(wire, topology, "rid-2", "VALIDATION_ERROR: x")
        wire.ch.queue_delete(topology)
        code, _out, err = dlq(topology, "requeue", "--all")
        assert code == 1
        assert "does not exist" in err
        assert [r["requestId"] for r in listed(topology)] == ["rid-1", "rid-2"]

    def test_keeps_the_broker_validated_user_id(self, wire: Wire, topology: str) -> None:
        """A letter sent by the requeuing connection's own user keeps its user_id; one without
        a user_id comes back without one."""
        dead_letter(wire, topology, "rid-guest", None, user_id="guest")
        dead_letter(wire, topology, "rid-nobody", None)
        code, out, err = dlq(topology, "requeue", "--all")
        assert code == 0, err
        assert "requeued 2 of 2" in out
        users = {
            json.loads(body)["metadata"]["requestId"]: props.user_id
            for _m, props, body in get_all(topology)
        }
        assert users == {"rid-guest": "guest", "rid-nobody": None}

    def test_requeued_request_is_still_refused_to_its_user(
        self,
        wire: Wire,
        topology: str,
        start_worker: Callable[..., WorkerProcess],
        agents: Agents,
        tmp_path: Path,
    ) -> None:
        """A request denied to its user, dead-lettered by expiry and requeued, is still that
        user's: the worker refuses it and no agent runs."""
        policy = tmp_path / "policy.json"
        policy.write_text(
            json.dumps(
                {
                    "default": "allow",
                    "rules": [
                        {
                            "id": "no-guest",
                            "action": "deny",
                            "intents": ["ProcessIntent"],
                            "users": ["guest"],
                        }
                    ],
                }
            )
        )
        wire.ch.basic_publish(
            "",
            topology,
            body_of(envelope(request_id="rid-denied")),
            pika.BasicProperties(
                content_type="application/json",
                correlation_id="cid-denied",
                reply_to=wire.reply_queue,
                user_id="guest",
                expiration="1",
                delivery_mode=2,
            ),
        )
        assert wait_for(lambda: queue_depth(f"{topology}.dlq") == 1, timeout=20)
        start_worker(env={**agents.env, "INTENTUS_POLICY_FILE": str(policy)})
        code, _out, err = dlq(topology, "requeue", "rid-denied")
        assert code == 0, err
        reply = wire.get(wire.reply_queue, timeout=30)
        assert reply.props.correlation_id == "cid-denied"
        assert reply.json["error"]["code"] == "UNAUTHORIZED"
        assert agents.calls() == []

    def test_refuses_a_letter_whose_identity_it_cannot_keep(
        self, wire: Wire, topology: str
    ) -> None:
        """Another user's letter would lose its user_id (the broker lets a connection set only
        its own): it stays in the DLQ, the command names the user and exits 1; the others go."""
        require_rabbitmqctl()
        with TempUser(f"dlq-bob-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex) as bob:
            conn = pika.BlockingConnection(pika.URLParameters(bob.url))
            try:
                ch = conn.channel()
                ch.confirm_delivery()
                ch.basic_publish(
                    "",
                    f"{topology}.dlq",
                    body_of(envelope(request_id="rid-bob")),
                    pika.BasicProperties(user_id=bob.name, delivery_mode=2),
                )
            finally:
                conn.close()
            dead_letter(wire, topology, "rid-guest", None, user_id="guest")
            code, out, err = dlq(topology, "requeue", "--all")
        assert code == 1
        assert "rid-bob" in err and repr(bob.name) in err and "user_id" in err
        assert "requeued 1 of 2" in out
        assert [r["requestId"] for r in listed(topology)] == ["rid-bob"]
        ((_m, props, body),) = get_all(topology)
        assert (json.loads(body)["metadata"]["requestId"], props.user_id) == ("rid-guest", "guest")

    def test_needs_a_selection(self, topology: str) -> None:
        """Requeue without ids, --reason or --all is a usage error."""
        code, _out, err = dlq(topology, "requeue")
        assert code == 2
        assert "--all" in err


class TestPurge:
    def test_refuses_without_a_terminal_and_yes(self, wire: Wire, topology: str) -> None:
        """No tty and no --yes: exit 2, nothing deleted."""
        dead_letter(wire, topology, "rid-1", "VALIDATION_ERROR: x")
        code, _out, err = dlq(topology, "purge")
        assert code == 2
        assert "--yes" in err
        assert queue_depth(f"{topology}.dlq") == 1

    @pytest.mark.parametrize(("answer", "left"), [("n", 1), ("y", 0)])
    def test_asks_on_a_terminal(self, wire: Wire, topology: str, answer: str, left: int) -> None:
        """On a terminal it asks, and deletes only on yes."""
        dead_letter(wire, topology, "rid-1", "VALIDATION_ERROR: x")
        controller, terminal = os.openpty()
        try:
            os.write(controller, f"{answer}\n".encode())
            code, out, _err = dlq(topology, "purge", stdin=terminal)
        finally:
            os.close(controller)
            os.close(terminal)
        assert f"delete all 1 ready messages in {topology}.dlq? [y/N]" in out
        assert code == (0 if answer == "y" else 1)
        assert queue_depth(f"{topology}.dlq") == left

    def test_deletes_only_what_was_confirmed(self, wire: Wire, topology: str) -> None:
        """Letters arriving while the operator reads the question are not deleted."""
        dead_letter(wire, topology, "rid-shown", "VALIDATION_ERROR: x")
        controller, terminal = os.openpty()
        env = {k: v for k, v in os.environ.items() if not k.startswith("INTENTUS_")}
        env.update({"INTENTUS_AMQP_URL": AMQP_URL, "INTENTUS_QUEUE": topology})
        proc = subprocess.Popen(
            [INTENTUS, "dlq", "purge"],
            env=env,
            cwd=str(ROOT),
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            seen = b""
            while b"[y/N]" not in seen:
                ready, _, _ = select.select([proc.stdout], [], [], 30)
                assert ready, seen
                chunk = os.read(proc.stdout.fileno(), 4096)
                assert chunk, seen
                seen += chunk
            for i in range(3):
                dead_letter(wire, topology, f"rid-late-{i}", "VALIDATION_ERROR: x")
            os.write(controller, b"y\n")
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
            os.close(controller)
            os.close(terminal)
        assert proc.returncode == 0, err
        assert f"delete all 1 ready messages in {topology}.dlq? [y/N]" in seen.decode()
        assert out.decode().strip() == f"purged 1 messages from {topology}.dlq"
        assert [r["requestId"] for r in listed(topology)] == [f"rid-late-{i}" for i in range(3)]

    def test_yes_purges(self, wire: Wire, topology: str) -> None:
        """--yes deletes every dead letter and says how many."""
        for i in range(3):
            dead_letter(wire, topology, f"rid-{i}", "VALIDATION_ERROR: x")
        code, out, err = dlq(topology, "purge", "--yes")
        assert code == 0, err
        assert out == f"purged 3 messages from {topology}.dlq\n"
        assert queue_depth(f"{topology}.dlq") == 0

    def test_missing_dlq_is_a_clear_error(self, broker: None) -> None:
        """A queue whose DLQ was never declared exits 3 naming it."""
        code, _out, err = dlq("it.never-declared", "list")
        assert code == 3
        assert "it.never-declared.dlq" in err
