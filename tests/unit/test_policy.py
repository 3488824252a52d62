"""Policy: globs, first match, reasons, users/tags/sources/intents, invalid files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runtime import Policy, PolicyError, RequestContext, load_policy
from runtime.envelope import normalise, validate_envelope
from runtime.policy import PolicySubject

from .conftest import envelope


def subject(user: str | None = None, **env: Any) -> PolicySubject:
    e = validate_envelope(envelope(**env))
    from datetime import UTC, datetime

    normalise(e, received_at=datetime(2024, 1, 1, tzinfo=UTC), ctx=RequestContext(), body=b"")
    return PolicySubject.of(e, user)


def decide(doc: dict[str, Any], agents: list[str], **kw: Any) -> dict[str, Any]:
    return load_policy(doc).evaluate(agents, subject(**kw)).to_dict()


class TestEvaluate:
    def test_no_policy_allows_everything(self) -> None:
        """None is allow-all."""
        assert decide({}, ["a", "b"]) == {"allowed": ["a", "b"], "filtered": [], "reasons": {}}
        assert load_policy(None).evaluate(["x"], subject()).allowed == ["x"]

    def test_default_deny_reason(self) -> None:
        """default deny filters with 'denied by default'."""
        assert decide({"default": "deny"}, ["a"])["reasons"] == {"a": "denied by default"}

    def test_first_match_wins(self) -> None:
        """The first matching rule decides, later ones are not consulted."""
        doc = {
            "default": "deny",
            "rules": [
                {"id": "allow-a", "action": "allow", "agents": ["a*"]},
                {"id": "deny-all", "action": "deny", "agents": ["*"]},
            ],
        }
        out = decide(doc, ["abc", "b"])
        assert out["allowed"] == ["abc"]
        assert out["reasons"] == {"b": "denied by rule 'deny-all'"}

    def test_globs_not_regexes(self) -> None:
        """Patterns are globs: '.' is literal, '?' is one character, brackets are classes."""
        doc = {"rules": [{"id": "r", "action": "deny", "agents": ["a.?", "[xy]z"]}]}
        out = decide(doc, ["a.1", "ab1", "xz", "yz", "zz"])
        assert out["filtered"] == ["a.1", "xz", "yz"]

    def test_all_fields_must_match(self) -> None:
        """A rule with several fields matches only when all of them match."""
        doc = {"rules": [{"id": "r", "action": "deny", "agents": ["a"], "tags": ["secret"]}]}
        assert decide(doc, ["a"])["filtered"] == []
        assert decide(doc, ["a"], context={"tags": ["x", "secret"]})["filtered"] == ["a"]

    def test_intents_by_name_or_name_at_version(self) -> None:
        """'intents' matches the name, or name@version when the pattern has '@'."""
        by_name = {"rules": [{"id": "r", "action": "deny", "intents": ["Process*"]}]}
        by_version = {"rules": [{"id": "r", "action": "deny", "intents": ["ProcessIntent@2.*"]}]}
        assert decide(by_name, ["a"])["filtered"] == ["a"]
        assert decide(by_version, ["a"])["filtered"] == []
        assert decide(by_version, ["a"], version="2.1")["filtered"] == ["a"]

    def test_sources_match_either_field(self) -> None:
        """'sources' matches metadata.source or context.sourceAgent."""
        doc = {"rules": [{"id": "r", "action": "deny", "sources": ["evil"]}]}
        assert decide(doc, ["a"], context={"sourceAgent": "evil"})["filtered"] == ["a"]
        assert decide(doc, ["a"], metadata={"requestId": "r", "source": "evil"})["filtered"] == [
            "a"
        ]
        assert decide(doc, ["a"])["filtered"] == []

    def test_users_and_missing_user(self) -> None:
        """'users' matches the AMQP user_id; no user_id is the empty string."""
        doc = {"rules": [{"id": "r", "action": "deny", "users": ["guest"]}]}
        assert decide(doc, ["a"], user="guest")["filtered"] == ["a"]
        assert decide(doc, ["a"], user="admin")["filtered"] == []
        anon = {"rules": [{"id": "anon", "action": "deny", "users": [""]}]}
        assert decide(anon, ["a"])["reasons"] == {"a": "denied by rule 'anon'"}
        assert decide(anon, ["a"], user="x")["filtered"] == []

    def test_order_of_candidates_is_kept(self) -> None:
        """Allowed and filtered keep the candidates' order."""
        doc = {"rules": [{"id": "r", "action": "deny", "agents": ["b", "d"]}]}
        out = decide(doc, ["a", "b", "c", "d"])
        assert (out["allowed"], out["filtered"]) == (["a", "c"], ["b", "d"])


class TestLoad:
    def test_path_dict_and_object(self, tmp_path: Path) -> None:
        """A path, a dict and a Policy are all accepted."""
        doc = {"default": "deny"}
        path = tmp_path / "p.json"
        path.write_text(json.dumps(doc))
        for source in (path, str(path), doc, Policy()):
            assert isinstance(load_policy(source), Policy)
        assert load_policy(path).document.default == "deny"

    def test_bad_rule_names_its_line(self, tmp_path: Path) -> None:
        """An invalid rule is reported with the line where it starts and the reason."""
        path = tmp_path / "p.json"
        path.write_text(
            '{\n  "default": "allow",\n  "rules": [\n'
            '    {"id": "ok", "action": "allow"},\n'
            '    {"id": "bad", "action": "maybe"}\n  ]\n}\n'
        )
        with pytest.raises(PolicyError) as info:
            load_policy(path)
        message = str(info.value)
        assert "line 5" in message
        assert "rules.1.action" in message

    def test_unknown_field_in_rule(self, tmp_path: Path) -> None:
        """An unknown rule field is named with its line."""
        path = tmp_path / "p.json"
        path.write_text('{"rules": [\n{"id": "r", "action": "deny", "regex": ".*"}\n]}')
        with pytest.raises(PolicyError) as info:
            load_policy(path)
        assert "line 2" in str(info.value) and "regex" in str(info.value)
        assert "unknown field" in str(info.value)

    def test_json_syntax_error_has_line_and_column(self, tmp_path: Path) -> None:
        """A JSON syntax error gives line and column."""
        path = tmp_path / "p.json"
        path.write_text('{\n  "default": "deny",\n  oops\n}')
        with pytest.raises(PolicyError) as info:
            load_policy(path)
        assert "line 3 column 3" in str(info.value)

    def test_bad_default_has_its_line(self, tmp_path: Path) -> None:
        """A bad top-level value is reported on its line."""
        path = tmp_path / "p.json"
        path.write_text('{\n\n  "default": "perhaps"\n}')
        with pytest.raises(PolicyError) as info:
            load_policy(path)
        assert "line 3" in str(info.value) and "default" in str(info.value)

    @pytest.mark.parametrize(
        "doc, fragment",
        [
            (
                {"rules": [{"id": "a", "action": "deny"}, {"id": "a", "action": "deny"}]},
                "duplicate",
            ),
            ({"rules": [{"id": "r", "action": "deny", "agents": ["[a"]}]}, "unbalanced"),
            ({"rules": [{"action": "deny"}]}, "rules.0.id"),
            ({"colour": 1}, "colour"),
        ],
    )
    def test_invalid_dicts(self, doc: dict[str, Any], fragment: str) -> None:
        """Invalid policies are PolicyError with the reason."""
        with pytest.raises(PolicyError) as info:
            load_policy(doc)
        assert fragment in str(info.value)

    def test_not_an_object_and_missing_file(self, tmp_path: Path) -> None:
        """A JSON array, or a missing file, is a PolicyError."""
        path = tmp_path / "p.json"
        path.write_text("[]")
        with pytest.raises(PolicyError, match="line 1"):
            load_policy(path)
        with pytest.raises(PolicyError, match="cannot read"):
            load_policy(tmp_path / "missing.json")
