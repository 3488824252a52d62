"""What a new user runs into first: a broker URL with unencoded characters, a handler given
where a registry is expected, output piped into `head`, and stats of records without an
intent or an agent. Each answer is a clear message and the documented exit code."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runtime import IntentusRuntime
from runtime.demo import registry as demo_registry
from runtime.replay import stats
from runtime.stores.memory import MemoryRecordStore
from tests.support.workerproc import ROOT
from worker import cli
from worker import config as configuration
from worker.errors import EXIT_CONFIG, ConfigError
from worker.loader import load_agents

# A password as typed, with characters that end the URL's authority early.
RAW_PASSWORDS = ["flaky-p#rimary", "flaky/primary", "flaky-p?rimary"]


class TestBrokerUrl:
    @pytest.mark.parametrize("password", RAW_PASSWORDS)
    def test_unencoded_password_is_a_configuration_error(self, password: str) -> None:
        url = f"amqp://guest:{password}@127.0.0.1:5672/%2F"
        with pytest.raises(ConfigError) as caught:
            configuration.load(env={"INTENTUS_AMQP_URL": url})
        text = str(caught.value)
        assert text.startswith("INTENTUS_AMQP_URL (--amqp-url):")
        assert "percent-encode" in text
        # nothing of the password, whole or in part, is repeated back
        for fragment in (password, password[:7], password[-6:]):
            assert fragment not in text

    def test_percent_encoded_password_is_accepted(self) -> None:
        url = "amqp://guest:flaky-p%23rimary@127.0.0.1:5672/%2F"
        cfg = configuration.load(env={"INTENTUS_AMQP_URL": url})
        assert cfg.password == "flaky-p#rimary"

    def test_unencoded_records_url_password_is_a_configuration_error(self) -> None:
        url = "postgresql://app:se#cret@127.0.0.1:5432/records"
        with pytest.raises(ConfigError, match=r"^INTENTUS_RECORDS_URL .*percent-encode"):
            configuration.load(env={"INTENTUS_RECORDS_URL": url})

    @pytest.mark.parametrize(
        "argv",
        [
            ["worker", "--metrics-addr", "127.0.0.1:0"],
            ["send", "ProcessIntent"],
            ["dlq", "list"],
        ],
    )
    def test_every_command_exits_2_with_one_clear_line(
        self, argv: list[str], tmp_path: Path
    ) -> None:
        url = "amqp://guest:flaky-p#rimary@127.0.0.1:5672/%2F"
        done = subprocess.run(
            [sys.executable, "-m", "worker.cli", *argv, "--amqp-url", url],
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == EXIT_CONFIG, done.stderr
        assert "Traceback" not in done.stderr
        assert "percent-encode" in done.stderr
        assert "flaky-p" not in done.stderr and "***rimary" not in done.stderr


class TestAgentsSpec:
    def test_a_handler_instead_of_a_registry_says_what_was_expected(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (tmp_path / "newcomer_agents.py").write_text(
            textwrap.dedent(
                """
                def process(envelope):
                    return {"ok": True}
                """
            )
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        with pytest.raises(ConfigError) as caught:
            load_agents("newcomer_agents:process")
        text = str(caught.value)
        assert text.startswith("INTENTUS_AGENTS (--agents):")
        assert "AgentRegistry" in text
        assert "function" in text and "process" in text

    def test_a_factory_returning_a_registry_still_works(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (tmp_path / "newcomer_factory.py").write_text(
            "from runtime.demo import registry\n\ndef make():\n    return registry\n"
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        assert load_agents("newcomer_factory:make") is demo_registry


class TestBrokenPipe:
    def test_output_into_a_closed_pipe_ends_quietly(self, tmp_path: Path) -> None:
        """`intentus ... | head`: the reader leaves early; no traceback."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "contract"],
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # as `head` does once it has its lines
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
        code = proc.wait(timeout=60)
        assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
        assert stderr == ""
        assert code == 1


def _records_without_intent_or_agent(records_dir: Path) -> None:
    runtime = IntentusRuntime(demo_registry, records_dir=str(records_dir))
    try:
        for body in (b"not json", b'{"version": "1.0", "intent": {}}'):
            runtime.commit_sync(runtime.process(body))
    finally:
        runtime.close()


class TestStats:
    def test_records_stats_names_no_intent_and_no_agent_in_words(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        _records_without_intent_or_agent(tmp_path / "records")
        assert cli.main(["records", "stats", "--records-dir", str(tmp_path / "records")]) == 0
        out = capsys.readouterr().out
        assert "None" not in out
        assert "(none)" in out

    def test_stats_keys_are_never_a_literal_none(self, tmp_path: Path) -> None:
        _records_without_intent_or_agent(tmp_path / "records")
        from runtime.stores.reader import open_reader

        summary = stats(open_reader(records_dir=str(tmp_path / "records"), records_url=""))
        assert summary["records"] == 2
        for key in ("by_intent", "by_agent"):
            assert "None" not in summary[key]
            assert summary[key]["(none)"] == 2

    def test_memory_store_too(self) -> None:
        assert stats(MemoryRecordStore())["by_intent"] == {}
