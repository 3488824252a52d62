"""A crashing agent: its traceback in the log, and a short reproducible form of it in the record."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from runtime import AgentRegistry, IntentusRuntime
from runtime.tracebacks import MAX_FRAMES, MAX_MESSAGE_CHARS, summarise

from .conftest import envelope, stored


def lookup_city(env: Any) -> dict[str, Any]:
    return {"city": env.payload["city"]}


def recurse(depth: int) -> None:
    if depth == 0:
        raise RuntimeError("bottom")
    recurse(depth - 1)


def deep(env: Any) -> dict[str, Any]:
    recurse(40)
    return {}


class Opaque:
    pass


def leaks_address(env: Any) -> dict[str, Any]:
    raise ValueError(f"cannot use {Opaque()!r}")


def crash(rt: IntentusRuntime, request_id: str = "req-crash") -> tuple[dict[str, Any], Any]:
    response = rt.route_intent(envelope(request_id=request_id))
    record = stored(rt, response.metadata.execution_id or "")
    return record, response


def registry(handler: Any) -> AgentRegistry:
    reg = AgentRegistry()
    reg.register("weather", handler, intents=["ProcessIntent"])
    return reg


class TestRecordedTraceback:
    def test_key_error_keeps_type_message_and_frames(self, make_runtime) -> None:
        """`payload["city"]` missing: the record names KeyError, 'city' and the agent's line."""
        record, response = crash(make_runtime(registry(lookup_city)))
        error = record["finalResponse"]["error"]
        assert error["code"] == "INTERNAL_AGENT_ERROR"
        assert error["message"] == "'city'"
        tb = error["details"]["traceback"]
        assert tb["type"] == "KeyError"
        assert tb["message"] == "'city'"
        line = lookup_city.__code__.co_firstlineno + 1
        assert tb["frames"] == [f"tests/unit/test_tracebacks.py:{line} in lookup_city"]
        assert tb["omittedFrames"] == 0
        assert error["details"]["exception"] == "KeyError"
        assert response.error is not None and response.error.details == error["details"]

    def test_no_absolute_paths_or_addresses(self, make_runtime) -> None:
        """Frames are relative to their import root; memory addresses are masked."""
        record, _ = crash(make_runtime(registry(leaks_address)))
        tb = record["finalResponse"]["error"]["details"]["traceback"]
        assert "0x…" in tb["message"]
        text = repr(tb)
        assert str(Path(__file__).resolve().parents[2]) not in text  # the checkout's location
        assert not any(frame.startswith("/") for frame in tb["frames"])
        assert "0x7" not in text

    def test_bounded_to_the_innermost_frames(self, make_runtime) -> None:
        """A deep stack keeps its last frames and says how many were left out."""
        record, _ = crash(make_runtime(registry(deep)))
        tb = record["finalResponse"]["error"]["details"]["traceback"]
        assert len(tb["frames"]) == MAX_FRAMES
        assert tb["omittedFrames"] == 41 + 1 - MAX_FRAMES
        assert all(" in recurse" in frame for frame in tb["frames"])

    def test_same_crash_same_record(self, make_runtime) -> None:
        """Two runtimes record the same traceback form for the same crash."""
        first, _ = crash(make_runtime(registry(lookup_city)))
        second, _ = crash(make_runtime(registry(lookup_city)))
        assert first["finalResponse"]["error"] == second["finalResponse"]["error"]

    def test_long_messages_are_cut(self) -> None:
        """The message kept in the record is bounded."""
        try:
            raise ValueError("x" * 10_000)
        except ValueError as exc:
            tb = summarise(exc)
        assert len(tb["message"]) == MAX_MESSAGE_CHARS
        assert tb["message"].endswith("…")


class TestLoggedTraceback:
    def test_logged_with_request_and_trace_ids(
        self, make_runtime, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The worker's log gets the whole traceback, with request id, trace id and agent."""
        with caplog.at_level(logging.ERROR, logger="intentus.runtime.invoker"):
            record, _ = crash(make_runtime(registry(lookup_city)), "req-logged")
        lines = [r for r in caplog.records if r.name == "intentus.runtime.invoker"]
        assert len(lines) == 1
        line = lines[0]
        assert line.levelno == logging.ERROR
        assert vars(line)["request_id"] == "req-logged"
        assert vars(line)["trace_id"] == record["envelope"]["metadata"]["traceId"]
        assert vars(line)["agent"] == "weather"
        assert "KeyError" in line.getMessage()
        assert line.exc_info is not None
        assert "lookup_city" in logging.Formatter().formatException(line.exc_info)

    def test_agent_error_is_not_logged_as_a_crash(
        self, make_runtime, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An AgentError is a deliberate answer: no traceback logged or recorded."""
        from runtime import AgentError, ErrorCode

        def refuses(env: Any) -> dict[str, Any]:
            raise AgentError(ErrorCode.AGENT_UNAVAILABLE, "down")

        with caplog.at_level(logging.ERROR, logger="intentus.runtime.invoker"):
            record, _ = crash(make_runtime(registry(refuses)))
        assert "traceback" not in record["finalResponse"]["error"]["details"]
        assert not [r for r in caplog.records if r.name == "intentus.runtime.invoker"]
