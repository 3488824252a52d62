"""The adversarial suite's plan: random rounds of messages, drawn from one seed.

A round is a list of groups; a group is one scenario on one requestId (or one message with odd
AMQP properties), each message tagged with the group's label so a broken invariant names the
scenario that broke it. Everything is drawn from `random.Random(f"{seed}:{round}")`, so a
seed and a round number give back the same messages (the timing of real processes does not
repeat: see the test's docstring).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.faults.load import Message, Reply, body_of, envelope
from tests.support.workerproc import WorkerProcess

INTENTS = {
    "work": "AdvWork",
    "raise": "AdvRaise",
    "timeout": "AdvHang",
    "exit": "AdvExit",
    "fork": "AdvFork",
}
AGENT_WEIGHTS = {"work": 8, "raise": 1, "timeout": 1, "exit": 1, "fork": 1}
SHAPE_WEIGHTS = {
    "single": 2,
    "twin-now": 3,
    "twin-later": 2,
    "two-users": 2,
    "malformed-twin": 3,
    "malformed-then-fixed": 2,
    "odd-props": 4,
    "odd-request-id": 1,
}
ODD_FIELDS = ("correlation_id", "message_id", "reply_to")
ODD_KINDS = ("non-utf8", "nul", "255-bytes", "missing")
WHO = ("alice", "bob", "anon")  # two broker users, and the default user sending no user_id

# What a run counts, in the order its FIGURES line prints them.
FIGURES = [
    "sent",
    "replied",
    "dead_lettered",
    "unaddressed_settled_by_record",
    "lost",
    "executed",
    "executed_twice",
    "in_doubt",
    "unsettled",
    "not_record",
    "twin_blocked",
    "not_ready",
    "kills",
    "sessions_cut",
]


@dataclass
class Sent:
    """One message of a group, with what the checks need to know about it."""

    message: Message
    uid: str  # also its `x-adv-id` header, which a dead-lettered copy keeps
    who: str
    request_id: str | None
    valid: bool
    phase: int  # 1: sent at once with the round; 2: sent once phase 1 is answered
    by_cid: bool  # its reply carries its correlation id
    addressable: bool  # its reply_to (or the default reply queue) can receive a reply


@dataclass
class Group:
    label: str
    shape: str
    agent: str
    sent: list[Sent] = field(default_factory=list)


@dataclass
class Round:
    seed: int
    number: int
    groups: list[Group]
    fault: str  # none | kill | cut | kill+cut
    fault_after: float  # seconds after the first half of phase 1 is published

    def messages(self, phase: int) -> list[Sent]:
        return [s for g in self.groups for s in g.sent if s.phase == phase]


class Planner:
    """Draws rounds; `user_ids` maps who → the broker user name it publishes as."""

    def __init__(
        self,
        seed: int,
        *,
        user_ids: dict[str, str | None],
        reply_queue: str,
        long_reply_queue: str,
        faults: tuple[str, ...],
        groups: int,
        shapes: list[str] | None = None,
        agents: list[str] | None = None,
    ) -> None:
        self.shapes = {k: w for k, w in SHAPE_WEIGHTS.items() if not shapes or k in shapes}
        self.agents = {k: w for k, w in AGENT_WEIGHTS.items() if not agents or k in agents}
        if not self.shapes or not self.agents:
            raise ValueError(f"no such shapes {shapes} or agents {agents}")
        self.seed = seed
        self.user_ids = user_ids
        self.reply_queue = reply_queue
        self.long_reply_queue = long_reply_queue
        self.faults = faults
        self.groups = groups

    def round(self, number: int) -> Round:
        rng = random.Random(f"{self.seed}:{number}")
        groups = []
        for i in range(self.groups):
            shape = _pick(rng, self.shapes)
            agent = _pick(rng, self.agents)
            label = f"r{number}-g{i}-{shape}-{agent}"
            groups.append(self._group(rng, label, shape, agent))
        return Round(
            seed=self.seed,
            number=number,
            groups=groups,
            fault=rng.choice(self.faults),
            fault_after=rng.uniform(0.05, 1.0),
        )

    def _group(self, rng: random.Random, label: str, shape: str, agent: str) -> Group:
        g = Group(label, shape, agent)
        rid = f"adv-{self.seed}-{label}-{uuid.uuid4().hex[:6]}"
        who = rng.choice(WHO)
        if shape == "single":
            g.sent.append(self._msg(rng, rid, who, agent, phase=1))
        elif shape in ("twin-now", "twin-later"):
            first = self._msg(rng, rid, who, agent, phase=1)
            second = self._msg(rng, rid, who, agent, phase=1 if shape == "twin-now" else 2)
            second.message.body = first.message.body  # the same request, re-sent
            g.sent += [first, second]
        elif shape == "two-users":
            a, b = rng.sample(WHO, 2)
            g.sent.append(self._msg(rng, rid, a, agent, phase=1))
            g.sent.append(self._msg(rng, rid, b, agent, phase=rng.choice((1, 2))))
        elif shape == "malformed-twin":
            pair = [
                self._msg(rng, rid, who, agent, phase=1),
                self._msg(rng, rid, who, agent, phase=1, malformed=True),
            ]
            rng.shuffle(pair)
            g.sent += pair
        elif shape == "malformed-then-fixed":
            g.sent.append(self._msg(rng, rid, who, agent, phase=1, malformed=True))
            g.sent.append(self._msg(rng, rid, who, agent, phase=2))
        elif shape == "odd-props":
            prop, kind = rng.choice(ODD_FIELDS), rng.choice(ODD_KINDS)
            g.label = label = f"{label}-{prop}-{kind}"
            idless = prop == "message_id" and kind != "missing" and rng.random() < 0.5
            g.sent.append(self._msg(rng, rid, who, agent, phase=1, odd=(prop, kind), idless=idless))
        else:  # odd-request-id: legal but awkward requestIds, stored byte-exact on both stores
            kind = rng.choice(("nul", "unicode", "1024-chars"))
            g.label = f"{label}-{kind}"
            odd_rid = {
                "nul": f"{rid}\x00tail",
                "unicode": f"{rid}-\u00e9\u4e2d\U0001f600\u202e",
                "1024-chars": (rid + "-" + "x" * 1024)[:1024],
            }[kind]
            sent = self._msg(rng, odd_rid, who, agent, phase=1)
            sent.message.request_id = None  # in the body only: no odd message_id on top
            g.sent.append(sent)
        return g

    def _msg(
        self,
        rng: random.Random,
        rid: str,
        who: str,
        agent: str,
        *,
        phase: int,
        malformed: bool = False,
        odd: tuple[str, str] | None = None,
        idless: bool = False,
    ) -> Sent:
        payload: dict[str, Any] = {"who": who, "sleep_ms": rng.choice((0, 5, 20, 80))}
        env = envelope(INTENTS[agent], payload, request_id=rid)
        if malformed:
            env["surprise"] = True  # an unknown field: VALIDATION_ERROR
        if idless:
            del env["metadata"]["requestId"]
        uid = uuid.uuid4().hex
        message = Message(
            body_of(env),
            correlation_id=uid,
            request_id=None if idless else rid,
            reply_to=self.reply_queue,
            headers={"x-adv-id": uid},
            user_id=self.user_ids[who],
        )
        sent = Sent(
            message,
            uid,
            who,
            request_id=None if idless else rid,
            valid=not malformed,
            phase=phase,
            by_cid=True,
            addressable=True,
        )
        if odd is not None:
            prop, kind = odd
            value = self._odd_value(prop, kind, uid)
            message.overrides = {prop: value}
            if prop == "correlation_id":
                sent.by_cid = False
            if prop == "reply_to":
                sent.addressable = kind in ("missing", "255-bytes")
        return sent

    def _odd_value(self, prop: str, kind: str, uid: str) -> Any:
        if kind == "missing":
            return None
        if kind == "non-utf8":
            return b"\xff\xfe" + uid.encode() + b"\xc3("
        if kind == "nul":
            return f"{uid}\x00nul"
        if prop == "reply_to":  # a real queue whose name is 255 bytes long
            return self.long_reply_queue
        return (uid + "-" + "7" * 255)[:255]


def long_queue_name(prefix: str) -> str:
    return (prefix + ".long-replies-" + "q" * 255)[:255]


def _pick(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def request_id_of(reply: Reply) -> str | None:
    """The requestId a reply names (its body's metadata), if it is JSON."""
    try:
        return reply.json.get("metadata", {}).get("request_id")  # type: ignore[no-any-return]
    except ValueError:
        return None


def record_request_id(record: dict[str, Any]) -> str | None:
    return record.get("header", {}).get("requestId")  # type: ignore[no-any-return]


def metric_or_zero(w: WorkerProcess, name: str) -> float:
    """A worker's metric, 0 when it no longer answers (killed, or stopping)."""
    try:
        return w.metric(name)
    except OSError:
        return 0.0
