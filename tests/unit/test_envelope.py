"""IntentEnvelope parsing: defaults, validation, enums, depth, requestId chain, fuzzing."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import EnvelopeError, ErrorCode, IntentEnvelope, RequestContext
from runtime.envelope import MAX_DEPTH, decode_json, normalise, validate_envelope

from .conftest import body, envelope

RECEIVED = datetime(2024, 1, 15, 10, 30, 0, 123456, tzinfo=UTC)


def parse(raw: bytes, ctx: RequestContext | None = None) -> IntentEnvelope:
    return normalise(
        validate_envelope(decode_json(raw)),
        received_at=RECEIVED,
        ctx=ctx or RequestContext(),
        body=raw,
    )


def rejected(data: Any) -> EnvelopeError:
    with pytest.raises(EnvelopeError) as info:
        validate_envelope(data)
    return info.value


def nested(depth: int) -> dict[str, Any]:
    """An envelope whose JSON nesting is exactly `depth` levels (the envelope itself is 1)."""
    inner: Any = 1
    for _ in range(depth - 1):
        inner = {"n": inner}
    return {"version": "1.0", "intent": {"name": "X"}, "payload": inner}


class TestDefaults:
    def test_minimal_envelope_gets_every_default(self) -> None:
        """Only version and intent.name are required; everything else has its documented default."""
        env = parse(b'{"version": "1.0", "intent": {"name": "ProcessIntent"}}')
        data = env.to_dict()
        assert data["intent"] == {"name": "ProcessIntent", "version": "1.0"}
        assert data["payload"] == {}
        assert data["context"] == {
            "sourceAgent": "unknown",
            "timestamp": "2024-01-15T10:30:00.123Z",
            "priority": "NORMAL",
            "tags": [],
        }
        meta = data["metadata"]
        assert meta["source"] == "unknown"
        assert meta["createdAt"] == "2024-01-15T10:30:00.123Z"
        assert meta["identityChain"] == []
        assert data["routing"] == {"strategy": "DIRECT", "targetAgent": None, "fallbackAgents": []}

    def test_given_timestamps_are_kept(self) -> None:
        """Timestamps from the caller are not replaced by the receipt time."""
        env = parse(
            body(
                envelope(
                    context={"timestamp": "2020-02-02T00:00:00Z"},
                    metadata={"requestId": "r", "createdAt": "2021-01-01T00:00:00Z"},
                )
            )
        )
        assert env.context.timestamp == "2020-02-02T00:00:00Z"
        assert env.metadata.createdAt == "2021-01-01T00:00:00Z"

    def test_trace_id_is_generated_and_stable(self) -> None:
        """A missing traceId is derived from the requestId, so a redelivery keeps its trace."""
        a = parse(body(envelope(request_id="abc")))
        b = parse(body(envelope(request_id="abc")))
        assert a.metadata.traceId is not None and len(a.metadata.traceId) == 32
        assert a.metadata.traceId == b.metadata.traceId

    def test_trace_id_from_traceparent(self) -> None:
        """A W3C traceparent header provides the trace id when the body has none."""
        tid = "4bf92f3577b34da6a3ce929d0e0e4736"
        env = parse(body(envelope()), RequestContext(traceparent=f"00-{tid}-00f067aa0ba902b7-01"))
        assert env.metadata.traceId == tid


class TestEnums:
    @pytest.mark.parametrize("given", ["direct", "Fallback", "BROADCAST", "pArAlLeL"])
    def test_strategy_is_case_insensitive_and_upper_out(self, given: str) -> None:
        """Enum strings are accepted in any case and written upper case."""
        env = parse(body(envelope(strategy=given)))
        assert env.to_dict()["routing"]["strategy"] == given.upper()

    def test_priority_is_case_insensitive(self) -> None:
        """context.priority 'high' comes out as HIGH."""
        env = parse(body(envelope(context={"priority": "high"})))
        assert env.to_dict()["context"]["priority"] == "HIGH"

    def test_unknown_strategy_names_the_field(self) -> None:
        """An unknown strategy is a VALIDATION_ERROR naming routing.strategy."""
        err = rejected(envelope(strategy="ROUND_ROBIN"))
        assert err.code is ErrorCode.VALIDATION_ERROR
        assert err.field == "routing.strategy"
        assert "routing.strategy" in err.message


class TestValidation:
    def test_unknown_top_level_field_is_named(self) -> None:
        """An unknown field is rejected and named in the message."""
        err = rejected(envelope(colour="red"))
        assert err.code is ErrorCode.VALIDATION_ERROR
        assert err.field == "colour"
        assert "colour" in err.message

    def test_unknown_nested_field_is_named_with_its_path(self) -> None:
        """A nested unknown field is named with its dotted path."""
        err = rejected(envelope(context={"sourceAgent": "x", "mood": "ok"}))
        assert err.field == "context.mood"
        assert "'context.mood'" in err.message

    def test_missing_version(self) -> None:
        """version is required."""
        data = envelope()
        del data["version"]
        err = rejected(data)
        assert err.field == "version"
        assert "missing" in err.message

    def test_unsupported_version(self) -> None:
        """Only version '1.0' is accepted."""
        data = envelope()
        data["version"] = "2.0"
        err = rejected(data)
        assert err.field == "version"
        assert "'2.0'" in err.message

    def test_missing_intent_name(self) -> None:
        """intent.name is required."""
        err = rejected({"version": "1.0", "intent": {}})
        assert err.field == "intent.name"

    def test_empty_intent_name(self) -> None:
        """intent.name must not be empty."""
        err = rejected({"version": "1.0", "intent": {"name": ""}})
        assert err.field == "intent.name"

    def test_not_an_object(self) -> None:
        """A JSON array is not an envelope."""
        err = rejected([1, 2])
        assert err.code is ErrorCode.VALIDATION_ERROR
        assert "array" in err.message

    def test_bad_timestamp(self) -> None:
        """A timestamp that is not ISO 8601 is rejected with its field."""
        err = rejected(envelope(context={"timestamp": "yesterday"}))
        assert err.field == "context.timestamp"

    def test_depth_64_is_accepted(self) -> None:
        """Exactly 64 levels of nesting is fine."""
        validate_envelope(nested(MAX_DEPTH))

    def test_depth_65_is_rejected(self) -> None:
        """JSON nested deeper than 64 levels is a VALIDATION_ERROR."""
        err = rejected(nested(MAX_DEPTH + 1))
        assert err.code is ErrorCode.VALIDATION_ERROR
        assert "64" in err.message

    def test_very_deep_bytes_are_a_validation_error(self) -> None:
        """Nesting far beyond the parser's recursion limit is still a VALIDATION_ERROR."""
        raw = b'{"version":"1.0","intent":{"name":"X"},"payload":{"a":' + b"[" * 100_000
        raw += b"]" * 100_000 + b"}}"
        with pytest.raises(EnvelopeError) as info:
            parse(raw)
        assert info.value.code is ErrorCode.VALIDATION_ERROR

    @pytest.mark.parametrize("strategy", ["BROADCAST", "PARALLEL", "broadcast"])
    def test_target_agent_with_fan_out_is_rejected(self, strategy: str) -> None:
        """targetAgent means nothing for BROADCAST/PARALLEL: VALIDATION_ERROR naming it."""
        err = rejected(envelope(strategy=strategy, target="a"))
        assert err.field == "routing.targetAgent"

    def test_fallback_agents_with_parallel_is_rejected(self) -> None:
        """fallbackAgents with PARALLEL is a VALIDATION_ERROR naming it."""
        err = rejected(envelope(strategy="PARALLEL", fallbacks=["a"]))
        assert err.field == "routing.fallbackAgents"

    def test_target_agent_with_fallback_is_fine(self) -> None:
        """FALLBACK accepts a target and fallbacks."""
        env = validate_envelope(envelope(strategy="FALLBACK", target="a", fallbacks=["b"]))
        assert env.routing.targetAgent == "a"


class TestDecode:
    def test_bad_utf8_is_a_protocol_error(self) -> None:
        """Bytes that are not UTF-8 are a PROTOCOL_ERROR."""
        with pytest.raises(EnvelopeError) as info:
            decode_json(b'{"a": "\xff"}')
        assert info.value.code is ErrorCode.PROTOCOL_ERROR

    def test_not_json_is_a_protocol_error(self) -> None:
        """Non-JSON text is a PROTOCOL_ERROR with the position."""
        with pytest.raises(EnvelopeError) as info:
            decode_json(b"{nope")
        assert info.value.code is ErrorCode.PROTOCOL_ERROR
        assert "line 1" in info.value.message

    @pytest.mark.parametrize("raw", [b"NaN", b"[Infinity]", b"-Infinity"])
    def test_non_json_constants_are_rejected(self, raw: bytes) -> None:
        """NaN and Infinity are not JSON."""
        with pytest.raises(EnvelopeError):
            decode_json(raw)

    def test_float_overflow_is_rejected(self) -> None:
        """1e400 would become infinity, which cannot be recorded: it is rejected."""
        with pytest.raises(EnvelopeError):
            decode_json(b'{"x": 1e400}')

    def test_lone_surrogate_is_rejected(self) -> None:
        """A lone UTF-16 surrogate escape cannot be stored as UTF-8: it is rejected."""
        with pytest.raises(EnvelopeError):
            decode_json(b'{"x": "\\ud800"}')

    def test_surrogate_pair_is_fine(self) -> None:
        """A proper surrogate pair decodes to one character."""
        assert decode_json(b'{"x": "\\ud83d\\ude00"}') == {"x": "\U0001f600"}


class TestRequestId:
    def test_body_request_id_wins(self) -> None:
        """metadata.requestId from the body is used as is."""
        env = parse(body(envelope(request_id="mine")), RequestContext(message_id="m"))
        assert env.request_id == "mine"

    def test_message_id_is_next(self) -> None:
        """Without a requestId the AMQP message_id is used."""
        env = parse(
            body(envelope(request_id=None)), RequestContext(message_id="m", correlation_id="c")
        )
        assert env.request_id == "m"

    def test_correlation_id_after_that(self) -> None:
        """Without requestId and message_id, the correlation_id."""
        env = parse(body(envelope(request_id=None)), RequestContext(correlation_id="c"))
        assert env.request_id == "c"

    def test_hash_of_the_body_last(self) -> None:
        """Without any id: 'req-' + sha256(body)[:24], the same for the same bytes."""
        raw = body(envelope(request_id=None))
        env = parse(raw)
        assert env.request_id == "req-" + hashlib.sha256(raw).hexdigest()[:24]
        assert parse(raw).request_id == env.request_id


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)

envelope_like = st.fixed_dictionaries(
    {
        "version": st.sampled_from(["1.0", "2.0", 1]),
        "intent": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {"name": st.text(max_size=5)},
                optional={"version": st.one_of(st.text(max_size=4), json_values)},
            ),
        ),
    },
    optional={
        "payload": json_values,
        "context": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {},
                optional={
                    "priority": st.one_of(st.sampled_from(["low", "High", "x"]), json_values),
                    "tags": json_values,
                    "timestamp": st.one_of(st.just("2024-01-01T00:00:00Z"), json_values),
                },
            ),
        ),
        "metadata": st.one_of(
            json_values,
            st.fixed_dictionaries({}, optional={"requestId": json_values, "traceId": json_values}),
        ),
        "routing": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {},
                optional={
                    "strategy": st.sampled_from(["direct", "PARALLEL", "broadcast", "zzz"]),
                    "targetAgent": json_values,
                    "fallbackAgents": json_values,
                },
            ),
        ),
    },
)


class TestFuzz:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=200))
    def test_arbitrary_bytes_raise_only_envelope_error(self, raw: bytes) -> None:
        """Any bytes either parse or raise EnvelopeError, nothing else."""
        try:
            env = parse(raw)
        except EnvelopeError:
            return
        json.dumps(env.to_dict(), allow_nan=False).encode("utf-8")

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.one_of(json_values, envelope_like))
    def test_arbitrary_json_raises_only_envelope_error(self, value: Any) -> None:
        """Any JSON document either parses into a storable envelope or raises EnvelopeError."""
        raw = json.dumps(value).encode("utf-8")
        try:
            env = parse(raw)
        except EnvelopeError:
            return
        json.dumps(env.to_dict(), allow_nan=False, ensure_ascii=False).encode("utf-8")

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.text(max_size=30))
    def test_json_strings_with_escapes(self, text: str) -> None:
        """Payload strings (including escapes) either parse into storable data or are rejected."""
        raw = (
            b'{"version":"1.0","intent":{"name":"X"},"payload":{"s":'
            + json.dumps(text).encode()
            + b"}}"
        )
        try:
            env = parse(raw)
        except EnvelopeError:
            return
        json.dumps(env.to_dict(), ensure_ascii=False).encode("utf-8")
