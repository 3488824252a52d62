"""Policy: which of the ordered candidates may handle a request.

A policy is `default` (allow|deny) plus ordered rules. Each rule field is a list of glob
patterns (never regular expressions from users); a rule matches a candidate when every field
it gives matches; the first matching rule decides for that candidate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runtime.envelope import IntentEnvelope
from runtime.errors import PolicyError
from runtime.recorder import RecordPolicy

_FIELDS = ("intents", "agents", "sources", "users", "tags")
MAX_PATTERN_LENGTH = 256


class PolicyRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    action: Literal["allow", "deny"]
    intents: tuple[str, ...] | None = None
    agents: tuple[str, ...] | None = None
    sources: tuple[str, ...] | None = None
    users: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None

    @field_validator(*_FIELDS)
    @classmethod
    def _patterns(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        for pattern in value:
            if len(pattern) > MAX_PATTERN_LENGTH:
                raise ValueError(f"pattern longer than {MAX_PATTERN_LENGTH} characters")
            if pattern.count("[") != pattern.count("]"):
                raise ValueError(f"unbalanced brackets in pattern {pattern!r}")
        return value


class PolicyDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default: Literal["allow", "deny"] = "allow"
    rules: tuple[PolicyRule, ...] = ()

    @field_validator("rules")
    @classmethod
    def _unique_ids(cls, rules: tuple[PolicyRule, ...]) -> tuple[PolicyRule, ...]:
        seen: set[str] = set()
        for rule in rules:
            if rule.id in seen:
                raise ValueError(f"duplicate rule id {rule.id!r}")
            seen.add(rule.id)
        return rules


@dataclass(frozen=True, slots=True)
class PolicySubject:
    """What a rule can match on, besides the agent."""

    intent_name: str
    intent_version: str
    sources: tuple[str, ...]
    user: str
    tags: tuple[str, ...]

    @classmethod
    def of(cls, envelope: IntentEnvelope, user_id: str | None) -> PolicySubject:
        return cls(
            intent_name=envelope.intent.name,
            intent_version=envelope.intent.version,
            sources=(envelope.metadata.source, envelope.context.sourceAgent),
            user=user_id or "",
            tags=tuple(envelope.context.tags),
        )


@dataclass(slots=True)
class PolicyDecision:
    allowed: list[str] = field(default_factory=list)
    filtered: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    rules: dict[str, str] = field(default_factory=dict)  # filtered agent -> rule id or "default"

    def to_dict(self) -> RecordPolicy:
        return {"allowed": self.allowed, "filtered": self.filtered, "reasons": self.reasons}


def _any(patterns: Sequence[str], values: Sequence[str]) -> bool:
    return any(fnmatchcase(v, p) for p in patterns for v in values)


class Policy:
    """An evaluated policy document (immutable, thread-safe)."""

    def __init__(self, document: PolicyDocument | None = None, source: str = "<inline>") -> None:
        self.document = document or PolicyDocument()
        self.source = source
        #: No rule, and allowed by default: every candidate is allowed, whoever asks.
        self.allows_all = not self.document.rules and self.document.default == "allow"

    @classmethod
    def allow_all(cls) -> Policy:
        return cls(PolicyDocument(), "<allow-all>")

    def _rule_matches(self, rule: PolicyRule, agent: str, s: PolicySubject) -> bool:
        if rule.agents is not None and not _any(rule.agents, (agent,)):
            return False
        if rule.intents is not None:
            full = f"{s.intent_name}@{s.intent_version}"
            if not any(fnmatchcase(full if "@" in p else s.intent_name, p) for p in rule.intents):
                return False
        if rule.sources is not None and not _any(rule.sources, s.sources):
            return False
        if rule.users is not None and not _any(rule.users, (s.user,)):
            return False
        return rule.tags is None or _any(rule.tags, s.tags)

    def evaluate_envelope(
        self, agents: Sequence[str], envelope: IntentEnvelope, user_id: str | None
    ) -> PolicyDecision:
        """`evaluate` for this envelope's subject (not read at all when no rule could use it)."""
        if self.allows_all:
            return PolicyDecision(allowed=list(agents))
        return self.evaluate(agents, PolicySubject.of(envelope, user_id))

    def evaluate(self, agents: Sequence[str], subject: PolicySubject) -> PolicyDecision:
        decision = PolicyDecision()
        for agent in agents:
            action, rule_id = self.document.default, "default"
            for rule in self.document.rules:
                if self._rule_matches(rule, agent, subject):
                    action, rule_id = rule.action, rule.id
                    break
            if action == "allow":
                decision.allowed.append(agent)
            else:
                decision.filtered.append(agent)
                decision.rules[agent] = rule_id
                decision.reasons[agent] = (
                    "denied by default" if rule_id == "default" else f"denied by rule '{rule_id}'"
                )
        return decision


def _rule_lines(text: str) -> list[int]:
    """Line numbers where each element of the top-level "rules" array starts."""
    decoder = json.JSONDecoder()
    lines: list[int] = []
    key = text.find('"rules"')
    if key < 0:
        return lines
    pos = text.find("[", key)
    if pos < 0:
        return lines
    pos += 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return lines
        lines.append(text.count("\n", 0, pos) + 1)
        try:
            _, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return lines


def _explain(exc: ValidationError, text: str | None) -> str:
    err = exc.errors(include_url=False)[0]
    loc = list(err["loc"])
    where = ".".join(str(p) for p in loc) or "policy"
    line = ""
    if text is not None and len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        starts = _rule_lines(text)
        if loc[1] < len(starts):
            line = f"line {starts[loc[1]]}: "
    elif text is not None and loc and isinstance(loc[0], str):
        idx = text.find(f'"{loc[0]}"')
        if idx >= 0:
            line = f"line {text.count(chr(10), 0, idx) + 1}: "
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    return f"{line}{where}: {msg}"


def load_policy(source: str | Path | dict[str, Any] | Policy | None) -> Policy:
    """A path, a dict of the file's shape, a Policy, or None (allow everything)."""
    if source is None:
        return Policy.allow_all()
    if isinstance(source, Policy):
        return source
    if isinstance(source, dict):
        try:
            return Policy(PolicyDocument.model_validate(source), "<dict>")
        except ValidationError as exc:
            raise PolicyError(f"invalid policy: {_explain(exc, None)}") from None
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        raise PolicyError(f"{path}: YAML policies are not supported; write the policy as JSON")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"{path}: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: line 1: the policy must be a JSON object")
    try:
        return Policy(PolicyDocument.model_validate(data), str(path))
    except ValidationError as exc:
        raise PolicyError(f"{path}: {_explain(exc, text)}") from None
