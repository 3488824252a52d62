"""Policy on both transports: rules by AMQP user_id, agent, intent, tag; default deny."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.behaviour.drivers import Driver
from tests.integration.wire import envelope, event_types, execution_id, load_record

POLICY = {
    "default": "deny",
    "rules": [
        {
            "id": "no-guest-process",
            "action": "deny",
            "intents": ["ProcessIntent"],
            "users": ["guest"],
        },
        {"id": "no-beta", "action": "deny", "agents": ["beta"]},
        {"id": "allow-process", "action": "allow", "intents": ["ProcessIntent"]},
        {"id": "skip-down", "action": "deny", "agents": ["down"], "tags": ["no-*"]},
        {"id": "allow-summaries", "action": "allow", "intents": ["SummarizeIntent@1.0"]},
    ],
}


@pytest.fixture
def driver(start: Callable[..., Driver], tmp_path: Path) -> Driver:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY, indent=2))
    return start(policy_file=str(policy))


def answer(driver: Driver, rid: str, **kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    user_id = kw.pop("user_id", None)
    reply = driver.request(envelope(request_id=rid, **kw), user_id=user_id)
    return reply.json, load_record(driver.records_dir, execution_id(rid))


def test_user_denied_by_rule(driver: Driver) -> None:
    """The broker-validated user_id "guest" is denied ProcessIntent → UNAUTHORIZED."""
    body, record = answer(driver, "req-guest", user_id="guest")
    assert body["status"] == "error"
    assert body["error"]["code"] == "UNAUTHORIZED"
    assert record["policy"]["allowed"] == []
    assert record["policy"]["filtered"] == ["alpha", "beta", "remote-zero"]
    assert record["policy"]["reasons"] == {
        name: "denied by rule 'no-guest-process'" for name in ("alpha", "beta", "remote-zero")
    }
    assert event_types(record) == ["INTENT_RECEIVED", "ROUTER_DECISION", "FINAL_RESPONSE"]
    assert record["routerDecision"]["reason"] == "all_filtered"
    assert driver.calls() == []
    assert (
        driver.metric("intentus_policy_filtered_total", agent="alpha", rule="no-guest-process") == 1
    )


def test_no_user_id_is_the_empty_user(driver: Driver) -> None:
    """Without user_id the user rule does not match; the agent rule still filters beta."""
    body, record = answer(driver, "req-anon", strategy="BROADCAST")
    assert body["status"] == "success"
    assert body["metadata"]["agent"] == "remote-zero"
    assert record["policy"] == {
        "allowed": ["alpha", "remote-zero"],
        "filtered": ["beta"],
        "reasons": {"beta": "denied by rule 'no-beta'"},
    }
    assert record["routerDecision"]["tryOrder"] == ["alpha", "remote-zero"]
    assert driver.calls() == ["alpha req-anon", "remote-zero req-anon"]
    assert driver.metric("intentus_policy_filtered_total", agent="beta", rule="no-beta") == 1


def test_filtered_target_is_unauthorized(driver: Driver) -> None:
    """DIRECT to a filtered targetAgent → UNAUTHORIZED, no agent runs."""
    body, record = answer(driver, "req-beta", target="beta")
    assert body["error"]["code"] == "UNAUTHORIZED"
    assert event_types(record) == ["INTENT_RECEIVED", "ROUTER_DECISION", "FINAL_RESPONSE"]
    assert driver.calls() == []


def test_denied_by_default(driver: Driver) -> None:
    """No rule matches → the default (deny) with its reason."""
    body, record = answer(driver, "req-race", intent="RaceIntent", strategy="PARALLEL")
    assert body["error"]["code"] == "UNAUTHORIZED"
    assert record["policy"]["reasons"] == {
        "slowpoke": "denied by default",
        "fast": "denied by default",
    }
    assert driver.calls() == []
    assert driver.metric("intentus_policy_filtered_total", agent="fast", rule="default") == 1


def test_fallback_skips_a_filtered_name(driver: Driver) -> None:
    """A tag rule filters `down`; FALLBACK skips it and goes straight to `up`."""
    body, record = answer(
        driver,
        "req-tagged",
        intent="SummarizeIntent",
        strategy="FALLBACK",
        target="down",
        fallbacks=["up"],
        tags=["no-down"],
    )
    assert body["status"] == "success"
    assert body["metadata"]["agent"] == "up"
    assert record["policy"]["reasons"] == {"down": "denied by rule 'skip-down'"}
    assert record["routerDecision"]["tryOrder"] == ["up"]
    assert driver.calls() == ["up req-tagged"]

    body, record = answer(driver, "req-untagged", intent="SummarizeIntent", strategy="FALLBACK")
    assert body["metadata"]["agent"] == "up"
    assert record["routerDecision"]["tryOrder"] == ["down", "up"]
    assert driver.calls()[1:] == ["down req-untagged", "up req-untagged"]
