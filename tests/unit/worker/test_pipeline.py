"""The pipeline: every kind of input becomes one decision (record, reply, dead letter)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import AgentRegistry, IntentusRuntime
from tests.unit.worker.conftest import request
from worker.pipeline import Decision, context_of, redecide
from worker.transport import Delivery

JSON = "application/json"


@pytest.fixture
def runtime(registry: AgentRegistry, tmp_path: Path) -> Iterator[IntentusRuntime]:
    rt = IntentusRuntime(registry, tmp_path / "records", max_message_bytes=600, worker_id="pipe")
    yield rt
    rt.close()


def decide(runtime: IntentusRuntime, delivery: Delivery, default_reply_queue: str) -> Decision:
    """What the worker does with one delivery, run inline: route it, then decide."""
    outcome = runtime.process(
        delivery.body,
        context_of(delivery),
        content_type=delivery.content_type,
        correlation_id=delivery.correlation_id,
    )
    return redecide(outcome, delivery, default_reply_queue)


def settle(rt: IntentusRuntime, decision: Decision) -> None:
    """What the worker does after deciding: store the record, then finish."""
    outcome = decision.outcome
    if outcome.record is not None:
        rt.store.put(outcome.execution_id, outcome.record)
    rt.finish(outcome, recorded=outcome.record is not None)


class TestDecide:
    def test_valid_request_is_executed_and_answered_to_reply_to(
        self, runtime: IntentusRuntime
    ) -> None:
        """A valid request: executed, recorded, replied to reply_to with its correlation id."""
        d = decide(
            runtime,
            Delivery(request("v1"), content_type=JSON, reply_to="rq", correlation_id="c1"),
            "dflt",
        )
        assert (d.outcome.kind, d.outcome.status) == ("executed", "success")
        assert d.record is not None and d.dead_letter_reason is None
        assert d.reply is not None
        assert (d.reply.routing_key, d.reply.correlation_id) == ("rq", "c1")
        assert json.loads(d.reply.body)["payload"] == {"by": "alpha"}
        assert d.reply.headers["x-intentus-execution-id"] == d.outcome.execution_id

    def test_without_reply_to_the_default_queue_and_request_id(
        self, runtime: IntentusRuntime
    ) -> None:
        """No reply_to and no correlation_id: the default reply queue, keyed by requestId."""
        d = decide(runtime, Delivery(request("v2"), content_type=JSON), "dflt")
        assert d.reply is not None
        assert (d.reply.routing_key, d.reply.correlation_id) == ("dflt", "v2")

    def test_no_destination_no_reply(self, runtime: IntentusRuntime) -> None:
        """No reply_to and no default reply queue: recorded, not answered."""
        d = decide(runtime, Delivery(request("v3"), content_type=JSON), "")
        assert d.reply is None and d.record is not None

    @pytest.mark.parametrize(
        ("body", "content_type", "code"),
        [
            (b"{not json", JSON, "PROTOCOL_ERROR"),
            (json.dumps({"version": "1.0"}).encode(), JSON, "VALIDATION_ERROR"),
            (request("big", document_id="x" * 1000), JSON, "PAYLOAD_TOO_LARGE"),
            (request("ct"), "text/plain", "PROTOCOL_ERROR"),
        ],
        ids=["not-json", "invalid-envelope", "too-large", "wrong-content-type"],
    )
    def test_bad_input_is_recorded_answered_and_dead_lettered(
        self, runtime: IntentusRuntime, body: bytes, content_type: str, code: str
    ) -> None:
        """Bad input never raises: an error reply, a record, and a dead-letter reason."""
        d = decide(runtime, Delivery(body, content_type=content_type, reply_to="rq"), "dflt")
        assert (d.outcome.kind, d.outcome.status, d.outcome.error_code) == (
            "rejected",
            "error",
            code,
        )
        assert d.dead_letter_reason is not None and d.dead_letter_reason.startswith(code)
        assert d.record is not None
        assert d.reply is not None and json.loads(d.reply.body)["error"]["code"] == code

    def test_wrong_content_type_keeps_the_request_id(self, runtime: IntentusRuntime) -> None:
        """A body refused for its content type is still answered under its requestId."""
        d = decide(runtime, Delivery(request("kept"), content_type="text/plain"), "dflt")
        assert d.reply is not None and d.reply.correlation_id == "kept"

    def test_duplicate_is_answered_from_the_record(self, runtime: IntentusRuntime) -> None:
        """The same request again: the stored answer, nothing new recorded or dead-lettered."""
        first = decide(runtime, Delivery(request("dup"), content_type=JSON), "dflt")
        settle(runtime, first)
        again = decide(
            runtime, Delivery(request("dup"), content_type=JSON, redelivered=True), "dflt"
        )
        assert again.outcome.kind == "replayed"
        assert again.record is None and again.dead_letter_reason is None
        assert again.reply is not None and first.reply is not None
        assert again.reply.body == first.reply.body

    def test_same_request_id_other_body_is_a_conflict(self, runtime: IntentusRuntime) -> None:
        """A reused requestId with another payload: an IDEMPOTENCY_CONFLICT answer."""
        settle(runtime, decide(runtime, Delivery(request("same"), content_type=JSON), "dflt"))
        other = decide(
            runtime, Delivery(request("same", document_id="other"), content_type=JSON), "dflt"
        )
        assert (other.outcome.kind, other.outcome.error_code) == (
            "conflict",
            "IDEMPOTENCY_CONFLICT",
        )
        assert other.record is None
        assert other.reply is not None
