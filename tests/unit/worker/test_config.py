"""Configuration: loading (defaults, environment, flags), validation, and password masking."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import typing

import pytest

from worker import config
from worker.config import Config, load, mask_url, url_password
from worker.errors import ConfigError
from worker.logs import Scrub


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return parser.parse_args(list(argv))


def help_text() -> str:
    """The settings' `--help`, on one line."""
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return " ".join(parser.format_help().split())


class TestLoad:
    def test_defaults(self) -> None:
        """No environment and no flags: the documented defaults."""
        cfg = load(env={})
        assert cfg.queue == "intentus.requests"
        assert cfg.queue_type == "quorum"
        assert cfg.prefetch == 0  # chosen from the agents by the worker
        assert cfg.worker_id

    def test_environment_overrides_defaults(self) -> None:
        """INTENTUS_* variables are read and converted to their types."""
        cfg = load(
            env={
                "INTENTUS_QUEUE": "q1",
                "INTENTUS_PREFETCH": "7",
                "INTENTUS_AGENT_TIMEOUT_S": "1.5",
            }
        )
        assert (cfg.queue, cfg.prefetch, cfg.agent_timeout_s) == ("q1", 7, 1.5)

    def test_flags_override_environment(self) -> None:
        """A flag wins over its environment variable."""
        cfg = load(parsed("--queue", "from-flag"), env={"INTENTUS_QUEUE": "from-env"})
        assert cfg.queue == "from-flag"

    def test_empty_worker_id_means_default(self) -> None:
        """INTENTUS_WORKER_ID="" falls back to hostname-pid."""
        assert load(env={"INTENTUS_WORKER_ID": ""}).worker_id

    def test_derived_names(self) -> None:
        """The dead-letter exchange and queue are named after the request queue."""
        cfg = Config(queue="orders", metrics_addr="[::1]:9000")
        assert (cfg.dlx, cfg.dlq) == ("orders.dlx", "orders.dlq")
        assert cfg.metrics_host_port == ("::1", 9000)


class TestValidate:
    @pytest.mark.parametrize(
        ("env", "names"),
        [
            ({"INTENTUS_PREFETCH": "many"}, "INTENTUS_PREFETCH"),
            ({"INTENTUS_AGENT_TIMEOUT_S": "soon"}, "INTENTUS_AGENT_TIMEOUT_S"),
            ({"INTENTUS_AMQP_URL": "http://h/"}, "INTENTUS_AMQP_URL"),
            ({"INTENTUS_QUEUE": ""}, "INTENTUS_QUEUE"),
            ({"INTENTUS_QUEUE": "amq.mine"}, "INTENTUS_QUEUE"),
            ({"INTENTUS_QUEUE_TYPE": "stream"}, "INTENTUS_QUEUE_TYPE"),
            ({"INTENTUS_CONCURRENCY": "0"}, "INTENTUS_CONCURRENCY"),
            ({"INTENTUS_PREFETCH": "70000"}, "INTENTUS_PREFETCH"),
            ({"INTENTUS_AGENT_TIMEOUT_S": "0"}, "INTENTUS_AGENT_TIMEOUT_S"),
            ({"INTENTUS_MAX_MESSAGE_BYTES": "0"}, "INTENTUS_MAX_MESSAGE_BYTES"),
            ({"INTENTUS_SHUTDOWN_GRACE_S": "-1"}, "INTENTUS_SHUTDOWN_GRACE_S"),
            ({"INTENTUS_LOG_FORMAT": "xml"}, "INTENTUS_LOG_FORMAT"),
            ({"INTENTUS_LOG_LEVEL": "loud"}, "INTENTUS_LOG_LEVEL"),
            ({"INTENTUS_RECORDS_URL": "mysql://h/db"}, "INTENTUS_RECORDS_URL"),
            ({"INTENTUS_DELIVERY_LIMIT": "0"}, "INTENTUS_DELIVERY_LIMIT"),
            ({"INTENTUS_METRICS_ADDR": "nohost"}, "INTENTUS_METRICS_ADDR"),
            ({"INTENTUS_WORKER_ID": "a b"}, "INTENTUS_WORKER_ID"),
            ({"INTENTUS_AGENTS": "module_only"}, "INTENTUS_AGENTS"),
        ],
    )
    def test_bad_value_names_its_variable(self, env: dict[str, str], names: str) -> None:
        """Each bad value is a ConfigError (exit 2) naming the variable."""
        with pytest.raises(ConfigError, match=names) as err:
            load(env=env)
        assert err.value.exit_code == 2

    def test_bad_url_error_masks_the_password(self) -> None:
        """The error about a bad URL does not repeat its password."""
        with pytest.raises(ConfigError) as err:
            load(env={"INTENTUS_AMQP_URL": "http://u:s3cret@host/"})
        assert "s3cret" not in str(err.value)


class TestMasking:
    @pytest.mark.parametrize(
        ("url", "masked"),
        [
            ("amqp://u:p@host/vh", "amqp://u:***@host/vh"),
            ("amqp://u:p@ss@host/vh", "amqp://u:***@host/vh"),
            ("amqp://u:a@b@c@host:5672/%2F", "amqp://u:***@host:5672/%2F"),
            ("amqps://u:p%40ss@host/", "amqps://u:***@host/"),
            ("amqp://u:p@ss@host/?q=a@b", "amqp://u:***@host/?q=a@b"),
            ("postgresql://pg:x:y@db:5432/rec", "postgresql://pg:***@db:5432/rec"),
            ("amqp://host/vh", "amqp://host/vh"),
            ("amqp://user@host/", "amqp://user@host/"),
        ],
    )
    def test_mask_url(self, url: str, masked: str) -> None:
        """Everything between `://user:` and the last `@` of the authority is masked."""
        assert mask_url(url) == masked

    def test_password_with_at_sign(self) -> None:
        """The password is what lies before the authority's last `@`."""
        assert url_password("amqp://u:p@ss@host/") == "p@ss"
        assert url_password("amqp://u:p%40ss@host/") == "p@ss"

    def test_describe_masks_both_urls(self) -> None:
        """The start-up configuration log carries no password."""
        cfg = Config(amqp_url="amqp://u:p@ss@h/", records_url="postgresql://pg:q@w@db/r")
        text = repr(config.describe(cfg))
        assert "p@ss" not in text and "q@w" not in text and "ss@h" not in text


def scrubbed(scrub: Scrub, msg: str, *args: object) -> str:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, msg, args, None)
    scrub.filter(record)
    return record.getMessage()


class TestScrub:
    def test_secret_replaced_in_message_and_arguments(self) -> None:
        """A secret is replaced wherever it appears in the formatted message."""
        scrub = Scrub(["hunter2"])
        assert scrubbed(scrub, "login %s failed", "hunter2") == "login *** failed"

    def test_url_with_at_in_password_is_masked_whole(self) -> None:
        """A library logging the raw URL leaks no part of a password containing `@`."""
        url = "amqp://u:p@ss@host/"
        scrub = Scrub([p for p in [url_password(url)] if p])
        out = scrubbed(scrub, "connecting to %s", url)
        assert "p@ss" not in out and "ss@host" not in out
        assert out == "connecting to amqp://u:***@host/"

    def test_percent_encoded_password_is_scrubbed(self) -> None:
        """The URL-encoded spelling of a password is scrubbed as well as the decoded one."""
        url = "amqp://u:p%40ss%21@host/"
        scrub = Scrub([p for p in [url_password(url)] if p])
        out = scrubbed(scrub, "params %r", {"password": "p%40ss%21"})
        assert "p%40ss%21" not in out

    def test_exception_text_scrubbed(self) -> None:
        """Exception text attached to a record is scrubbed too."""
        scrub = Scrub(["hunter2"])
        try:
            raise RuntimeError("bad hunter2")
        except RuntimeError:
            import sys

            record = logging.LogRecord("t", logging.ERROR, __file__, 1, "x", (), sys.exc_info())
        scrub.filter(record)
        assert record.exc_text is not None and "hunter2" not in record.exc_text


class TestOneDeclaration:
    def test_options_are_the_config_fields(self) -> None:
        """One option per Config field, in order; its variable and flag follow from its name."""
        assert list(config.OPTIONS) == [f.name for f in dataclasses.fields(Config)]
        defaults = Config()
        for name, option in config.OPTIONS.items():
            assert option.env == "INTENTUS_" + name.upper()
            assert option.flag == "--" + name.replace("_", "-")
            assert option.help, name
            if name != "worker_id":  # computed at start: hostname-pid
                assert getattr(defaults, name) == option.default, name

    def test_enumerations_are_literals(self) -> None:
        """Queue type, log format and log level are typed with the values they accept."""
        hints = typing.get_type_hints(Config)
        assert typing.get_args(hints["queue_type"]) == ("quorum", "classic")
        assert typing.get_args(hints["log_format"]) == ("text", "json")
        assert typing.get_args(hints["log_level"]) == ("debug", "info", "warning", "error")
        assert config.OPTIONS["queue_type"].choices == ("quorum", "classic")

    def test_an_enumeration_accepts_exactly_its_values(self) -> None:
        """Each declared value of an enumeration loads; any other names the variable."""
        enumerations = [o for o in config.OPTIONS.values() if o.choices]
        assert len(enumerations) == 3
        for option in enumerations:
            for choice in option.choices:
                assert getattr(load(env={option.env: choice}), option.name) == choice
            with pytest.raises(ConfigError, match=option.env):
                load(env={option.env: "none-of-these"})

    def test_log_level_ignores_case(self) -> None:
        """INTENTUS_LOG_LEVEL=INFO is info, as it always was; other enumerations are exact."""
        assert load(env={"INTENTUS_LOG_LEVEL": "WARNING"}).log_level == "warning"
        with pytest.raises(ConfigError, match="INTENTUS_QUEUE_TYPE"):
            load(env={"INTENTUS_QUEUE_TYPE": "QUORUM"})

    def test_numbers_are_checked_against_their_declared_bounds(self) -> None:
        """A number just outside its declared range is refused, its bound accepted."""
        bounded = {n: o for n, o in config.OPTIONS.items() if o.low is not None}
        assert {"concurrency", "prefetch", "delivery_limit", "queue_max_priority"} <= set(bounded)
        for option in bounded.values():
            below = option.low - (1 if option.kind is int else 0.5)
            with pytest.raises(ConfigError, match=option.env):
                load(env={option.env: str(below)})
            if not option.above_low:
                assert getattr(load(env={option.env: str(option.low)}), option.name) == option.low

    def test_help_shows_each_default(self) -> None:
        """`--help` names every non-empty default and the variable."""
        text = help_text()
        assert "(default: intentus.requests) [env INTENTUS_QUEUE]" in text
        assert "(default: 30) [env INTENTUS_AGENT_TIMEOUT_S]" in text

    def test_help_lists_the_values_of_each_enumeration(self) -> None:
        """`--help` shows what an enumeration accepts, from its type."""
        text = help_text()
        assert "quorum or classic (default: quorum)" in text
        assert "debug, info, warning or error (default: info)" in text
