"""`docs/asyncapi.yaml`: up to date, valid AsyncAPI 3.0, and true of a real worker and broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pika.exceptions
import pytest
import yaml

from tests.integration.wire import Wire, envelope
from tests.support.broker import AMQP_URL, IN_CI, connection
from tests.support.workerproc import ROOT, WorkerProcess
from worker.amqp import declare_topology, queue_arguments
from worker.cli.contract import build, to_yaml
from worker.config import Config

CONTRACT = ROOT / "docs" / "asyncapi.yaml"
SPECS = ROOT / "tests" / ".asyncapi" / "node_modules" / "@asyncapi" / "specs" / "schemas"
INTENTUS = str(Path(sys.executable).parent / "intentus")


def asyncapi_schema() -> dict[str, Any]:
    """The official AsyncAPI 3.0.0 JSON schema, as installed by tests/run."""
    path = SPECS / "3.0.0.json"
    if not path.is_file():
        message = f"{path} missing: tests/run installs the npm package @asyncapi/specs"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(schema, dict)
    return schema


def payload_validator(doc: dict[str, Any], schema_name: str) -> jsonschema.Draft202012Validator:
    """A validator for one component schema, resolving the document's own refs."""
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": doc["components"]}
    return jsonschema.Draft202012Validator(root)


def header_validator(doc: dict[str, Any], message: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(doc["components"]["messages"][message]["headers"])


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("INTENTUS_")}


class TestCommittedContract:
    def test_is_what_the_command_writes_for_the_defaults(self) -> None:
        """docs/asyncapi.yaml equals `intentus contract` with no configuration."""
        done = subprocess.run(
            [INTENTUS, "contract"], env=_clean_env(), capture_output=True, check=True, timeout=60
        )
        assert done.stdout.decode() == CONTRACT.read_text(encoding="utf-8"), (
            "docs/asyncapi.yaml is stale: run `intentus contract --output docs/asyncapi.yaml`"
        )

    def test_yaml_reads_back_as_the_document(self) -> None:
        """The hand-written YAML parses (PyYAML) to exactly the generated data."""
        assert yaml.safe_load(CONTRACT.read_text(encoding="utf-8")) == build(Config())

    def test_validates_against_the_official_schema(self) -> None:
        """The file is a valid AsyncAPI 3.0.0 document."""
        validator = jsonschema.Draft7Validator(asyncapi_schema())
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(yaml.safe_load(CONTRACT.read_text(encoding="utf-8")))
        ]
        assert errors == []

    def test_the_schema_check_catches_a_broken_document(self) -> None:
        """A wrong operation action is reported, so the check above can fail."""
        doc = build(Config())
        doc["operations"]["handleIntent"]["action"] = "consume"
        assert not jsonschema.Draft7Validator(asyncapi_schema()).is_valid(doc)

    def test_output_option_and_configuration(self, tmp_path: Path) -> None:
        """--output writes the file; the queue names follow --queue and --reply-queue."""
        out = tmp_path / "contract.yaml"
        subprocess.run(
            [INTENTUS, "contract", "--queue", "orders", "--reply-queue", "", "--output", str(out)],
            env=_clean_env(),
            check=True,
            timeout=60,
        )
        doc = yaml.safe_load(out.read_text(encoding="utf-8"))
        addresses = {name: ch["address"] for name, ch in doc["channels"].items()}
        assert addresses == {
            "requests": "orders",
            "replies": None,
            "deadLetterExchange": "orders.dlx",
            "deadLetters": "orders.dlq",
        }
        assert jsonschema.Draft7Validator(asyncapi_schema()).is_valid(doc)


class TestYaml:
    @pytest.mark.parametrize(
        "value",
        [
            {"a": "yes", "b": "null", "c": "1.0", "d": "#x", "e": "a: b", "f": "", "g": " x"},
            {"list": [{"a": 1, "b": [1, 2]}, [], {}, "- x", None, True, 1.5]},
            {"$ref": "#/components/schemas/X", "ünï": 'ü\n"q"', "k-y": "@v"},
        ],
    )
    def test_round_trip(self, value: dict[str, Any]) -> None:
        """Strings YAML would misread (booleans, numbers, comments, colons) stay strings."""
        assert yaml.safe_load(to_yaml(value)) == value


@pytest.mark.integration
class TestAgainstTheBroker:
    def test_topology_matches_the_contract(self, queue_name: str) -> None:
        """Every queue and exchange the contract names is what the worker declares."""
        cfg = Config(amqp_url=AMQP_URL, queue=queue_name, reply_queue=f"{queue_name}.replies")
        declare_topology(cfg)
        doc = build(cfg)
        conn = connection()
        try:
            for name, channel in doc["channels"].items():
                amqp = channel.get("bindings", {}).get("amqp")
                if amqp is None:
                    assert name == "replies"  # reply_to is per request
                    continue
                ch = conn.channel()
                if amqp["is"] == "queue":
                    # Redeclaring with the contract's properties fails if they differ.
                    q = amqp["queue"]
                    arguments = {
                        "requests": queue_arguments(cfg),
                        "deadLetters": {"x-queue-type": cfg.queue_type},
                        "defaultReplies": {},
                    }[name]
                    ch.queue_declare(
                        channel["address"],
                        durable=q["durable"],
                        exclusive=q["exclusive"],
                        auto_delete=q["autoDelete"],
                        arguments=arguments,
                    )
                else:
                    ex = amqp["exchange"]
                    ch.exchange_declare(
                        channel["address"],
                        exchange_type=ex["type"],
                        durable=ex["durable"],
                        auto_delete=ex["autoDelete"],
                    )
                ch.close()
        except pika.exceptions.ChannelClosedByBroker as exc:
            pytest.fail(f"the broker disagrees with the contract: {exc}")
        finally:
            conn.close()

    def test_real_replies_and_dead_letters_fit_the_contract(
        self, start_worker: Callable[..., WorkerProcess], queue_name: str
    ) -> None:
        """A success reply, an error reply and a dead letter validate against its schemas."""
        start_worker()
        doc = build(Config(queue=queue_name))
        response = payload_validator(doc, "AgentResponse")
        request = payload_validator(doc, "IntentEnvelope")
        reply_headers = header_validator(doc, "AgentResponse")
        dead_headers = header_validator(doc, "DeadLetter")
        traceparent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
        wire = Wire()
        try:
            good = envelope(request_id="rid-contract-ok")
            request.validate(good)
            ok = wire.request(queue_name, good, headers={"traceparent": traceparent})
            missing = envelope("NoSuchIntent", request_id="rid-contract-none")
            err = wire.request(queue_name, missing)
            wire.publish(queue_name, b"{not json", correlation_id="cid-bad")
            wire.reply()
            dead = wire.get(f"{queue_name}.dlq")
        finally:
            wire.close()
        assert ok.json["status"] == "success"
        assert err.json["error"]["code"] == "CAPABILITY_NOT_FOUND"
        for reply in (ok, err):
            response.validate(reply.json)
            reply_headers.validate(reply.headers)
            assert reply.props.type == "AgentResponse"
            assert reply.props.content_type == doc["defaultContentType"]
        assert ok.headers["traceparent"] == traceparent
        dead_headers.validate(
            {k: (v.decode() if isinstance(v, bytes) else v) for k, v in dead.headers.items()}
        )
        assert dead.body == b"{not json"
        assert not request.is_valid({"version": "2.0", "intent": {"name": "X"}})
