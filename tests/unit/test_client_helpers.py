"""The clients' pure helpers and the priority option, without a broker."""

from __future__ import annotations

import re

import pytest

from worker import config as configuration
from worker.amqp import queue_arguments
from worker.errors import ConfigError
from worker.intents import amqp_priority, build_envelope, check_traceparent, new_traceparent


class TestPriority:
    def test_fixed_mapping(self) -> None:
        """Each context.priority has its AMQP priority, NORMAL when none is given."""
        names = ("LOW", "normal", "High", "CRITICAL", None)
        assert [amqp_priority(p) for p in names] == [0, 4, 7, 9, 4]

    def test_unknown_priority(self) -> None:
        """An unknown priority is a ValueError naming the valid ones."""
        with pytest.raises(ValueError, match="LOW, NORMAL, HIGH, CRITICAL"):
            amqp_priority("URGENT")


class TestTraceparent:
    def test_fresh_ones_differ(self) -> None:
        """new_traceparent gives a valid, sampled, unique W3C traceparent."""
        values = {new_traceparent() for _ in range(100)}
        assert len(values) == 100
        assert all(re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", v) for v in values)

    def test_check(self) -> None:
        """A caller's traceparent is normalised to lower case; malformed or all-zero ones fail."""
        good = "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01"
        assert check_traceparent(good) == good.lower()
        for bad in ("", "00-abc-def-01", "00-" + "0" * 32 + "-b7ad6b7169203331-01"):
            with pytest.raises(ValueError, match="traceparent"):
                check_traceparent(bad)


class TestEnvelope:
    def test_minimal(self) -> None:
        """Only what was given, plus a generated requestId and the source."""
        env = build_envelope("ProcessIntent")
        assert env["intent"] == {"name": "ProcessIntent", "version": "1.0"}
        assert env["routing"] == {"strategy": "DIRECT"}
        assert env["context"] == {"sourceAgent": "client"}
        assert re.fullmatch(r"req-[0-9a-f]{32}", env["metadata"]["requestId"])


class TestQueueMaxPriority:
    def test_default_off(self) -> None:
        """By default no queue gets x-max-priority."""
        cfg = configuration.load(env={"INTENTUS_QUEUE_TYPE": "classic"})
        assert cfg.queue_max_priority == 0
        assert "x-max-priority" not in queue_arguments(cfg)

    def test_classic(self) -> None:
        """A classic queue is declared with the configured x-max-priority."""
        cfg = configuration.load(
            env={"INTENTUS_QUEUE_TYPE": "classic", "INTENTUS_QUEUE_MAX_PRIORITY": "9"}
        )
        assert queue_arguments(cfg)["x-max-priority"] == 9

    def test_quorum_ignores_it(self) -> None:
        """A quorum queue never gets x-max-priority (the broker refuses it)."""
        cfg = configuration.load(env={"INTENTUS_QUEUE_MAX_PRIORITY": "9"})
        assert "x-max-priority" not in queue_arguments(cfg)

    def test_range(self) -> None:
        """Values outside 0..255 are a ConfigError naming the variable."""
        for bad in ("-1", "256"):
            with pytest.raises(ConfigError, match="INTENTUS_QUEUE_MAX_PRIORITY"):
                configuration.load(env={"INTENTUS_QUEUE_MAX_PRIORITY": bad})


class TestExports:
    def test_exception_tree(self) -> None:
        """Every client exception is a ClientError; RequestTimeout is also a TimeoutError."""
        from worker import ClientClosed, ClientError, ConnectionLost, PublishFailed, RequestTimeout

        for cls in (ClientClosed, ConnectionLost, PublishFailed, RequestTimeout):
            assert issubclass(cls, ClientError)
        assert issubclass(RequestTimeout, TimeoutError)
        assert ConnectionLost("x").exit_code == 3
