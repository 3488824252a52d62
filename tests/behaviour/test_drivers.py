"""The drivers themselves: what the behaviour cases rely on."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import tests.support.broker as broker
from tests.behaviour.drivers import metric_in, open_driver


class TestBrokerDriver:
    def test_fails_under_ci_without_a_broker(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """Under CI a missing broker fails the broker variant instead of skipping it."""
        monkeypatch.setattr(broker, "broker_up", lambda *args, **kwargs: False)
        monkeypatch.setattr(broker, "IN_CI", True)
        with pytest.raises(pytest.fail.Exception), open_driver("rabbitmq", tmp_path):
            pass

    def test_skips_locally_without_a_broker(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """Outside CI a missing broker skips the broker variant."""
        monkeypatch.setattr(broker, "broker_up", lambda *args, **kwargs: False)
        monkeypatch.setattr(broker, "IN_CI", False)
        with pytest.raises(pytest.skip.Exception), open_driver("rabbitmq", tmp_path):
            pass


class TestMemoryDriver:
    def test_logs_hold_what_the_worker_logged_with_tracebacks(self, tmp_path: Path) -> None:
        """An exception logged while the worker runs shows in `logs()` with its traceback."""
        with open_driver("memory", tmp_path, test_agents=False) as driver:
            try:
                raise ValueError("seen")
            except ValueError:
                logging.getLogger("intentus.worker").exception("failed")
            assert "Traceback" in driver.logs()
            assert "ValueError: seen" in driver.logs()

    def test_stop_leaves_nothing_unsettled(self, tmp_path: Path) -> None:
        """After a request is answered and the worker stopped, nothing is left in the queue."""
        with open_driver("memory", tmp_path, test_agents=False) as driver:
            driver.send(b"{}", correlation_id="c")
            assert driver.reply().correlation_id == "c"
            assert driver.stop() == 0
            assert driver.left_in_queue() == 0


class TestMetricIn:
    def test_sums_the_samples_whose_labels_match(self) -> None:
        """Only samples of the named series with every given label count."""
        text = "\n".join(
            [
                'intentus_x_total{kind="a",queue="q"} 2.0',
                'intentus_x_total{kind="b",queue="q"} 3.0',
                'intentus_x_total_created{kind="a",queue="q"} 99.0',
                'intentus_xy_total{kind="a"} 7.0',
            ]
        )
        assert metric_in(text, "intentus_x_total", kind="a") == 2.0
        assert metric_in(text, "intentus_x_total") == 5.0
        assert metric_in(text, "intentus_x_total", kind="c") == 0.0
