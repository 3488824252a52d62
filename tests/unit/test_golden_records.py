"""Records and replies, byte for byte, against golden files.

A fixed set of varied requests (every strategy, agent errors and exceptions, no candidate,
policy, rejected bodies, duplicates, odd text, a large payload, middleware, a timeout) is
routed on a fixed clock that steps at every reading, and every reply body and record must be
exactly the bytes in `golden/records.json`. Any change to how a record or a reply is built,
or to when the clock is read for it, shows here.

Regenerate (only for a deliberate format change) from the repository root with
`python -m tests.unit.test_golden_records --write`.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from runtime import AgentError, AgentRegistry, FixedClock, IntentusRuntime, RequestContext
from runtime.errors import RecordStoreError
from runtime.invoker import Abandoned
from runtime.middleware import Middleware
from runtime.outcome import Outcome
from runtime.stores.memory import MemoryRecordStore

GOLDEN = Path(__file__).parent / "golden" / "records.json"
INTENT = "GoldenIntent"


def req(
    payload: Any = None,
    *,
    rid: str | None = "g-1",
    strategy: str | None = None,
    target: str | None = None,
    fallbacks: list[str] | None = None,
    intent: str = INTENT,
    intent_version: str | None = None,
    **extra: Any,
) -> bytes:
    data: dict[str, Any] = {"version": "1.0", "intent": {"name": intent}}
    if intent_version is not None:
        data["intent"]["version"] = intent_version
    if payload is not None:
        data["payload"] = payload
    routing: dict[str, Any] = {}
    if strategy is not None:
        routing["strategy"] = strategy
    if target is not None:
        routing["targetAgent"] = target
    if fallbacks is not None:
        routing["fallbackAgents"] = fallbacks
    if routing:
        data["routing"] = routing
    if rid is not None:
        data["metadata"] = {"requestId": rid}
    data.update(extra)
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


# -- agents ------------------------------------------------------------------------------
def echo(env: Any) -> dict[str, Any]:
    return {"echo": env.payload, "intent": env.intent.name, "n": 1, "f": 0.1, "s": "ü\u2028"}


def empty(env: Any) -> dict[str, Any]:
    return {}


def unavailable(env: Any) -> dict[str, Any]:
    raise AgentError("AGENT_UNAVAILABLE", "down for maintenance", {"retry_in": 1.5, "n": [1]})


def crashes(env: Any) -> dict[str, Any]:
    raise RuntimeError("boom at 0x7f00deadbeef with é")


def not_a_dict(env: Any) -> Any:
    return ["not", "a", "dict"]


def surrogate(env: Any) -> dict[str, Any]:
    return {"text": "\ud800"}


def big(env: Any) -> dict[str, Any]:
    return {"items": [{"i": i, "v": i / 7, "t": "x" * (i % 13)} for i in range(400)]}


async def async_echo(env: Any) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"async": True, "echo": env.payload}


def registry() -> AgentRegistry:
    reg = AgentRegistry()
    reg.register("echo", echo, intents=[INTENT])
    reg.register("empty", empty, intents=[INTENT])
    reg.register("unavailable", unavailable, intents=[INTENT])
    reg.register("crashes", crashes, intents=[INTENT])
    reg.register("notdict", not_a_dict, intents=[INTENT])
    reg.register("surrogate", surrogate, intents=[INTENT])
    reg.register("big", big, intents=["BigIntent"])
    reg.register("solo", echo, intents=["SoloIntent@2.0"])
    reg.register("aecho", async_echo, intents=["AsyncIntent"])
    return reg


POLICY = {
    "default": "allow",
    "rules": [
        {"id": "no-crash-for-bob", "action": "deny", "agents": ["crashes"], "users": ["bob"]},
        {"id": "nobody-secret", "action": "deny", "intents": ["SecretIntent"]},
    ],
}


class Tagger(Middleware):
    def before_route(self, envelope: Any) -> None:
        envelope.payload["tagged"] = True
        envelope.context.tags.append("mw")


class FailOnce(MemoryRecordStore):
    """A memory store whose first record write fails (the disk was full, say)."""

    def __init__(self) -> None:
        super().__init__("golden-owner")
        self.failures = 1

    def put(self, execution_id: str, data: bytes) -> None:
        if self.failures:
            self.failures -= 1
            raise RecordStoreError("no space left")
        super().put(execution_id, data)


# -- running -----------------------------------------------------------------------------
Result = dict[str, Any]


def result(outcome: Outcome) -> Result:
    return {
        "kind": outcome.kind,
        "reply": outcome.body.decode("utf-8"),
        "record": None if outcome.record is None else outcome.record.decode("utf-8"),
    }


def inline(rt: IntentusRuntime, body: bytes | str, **kwargs: Any) -> Result:
    """The worker's path: `process_inline`, then the commit."""
    delivered: list[Outcome] = []
    rt.process_inline(body, deliver=lambda o: delivered.append(rt.commit_sync(o)), **kwargs)
    (outcome,) = delivered
    return result(outcome)


def pooled(rt: IntentusRuntime, body: bytes | str, **kwargs: Any) -> Result:
    """`process` (handlers on pool threads), then the commit."""
    return result(rt.commit_sync(rt.process(body, **kwargs)))


def runtime(**kwargs: Any) -> IntentusRuntime:
    kwargs.setdefault("clock", FixedClock(step_s=0.001))
    return IntentusRuntime(registry(), worker_id="golden", **kwargs)


def scenarios() -> Iterator[tuple[str, Callable[[], list[Result]]]]:
    def one(make: Callable[[], IntentusRuntime], *bodies: Any, how: Any = inline) -> Any:
        def run() -> list[Result]:
            rt = make()
            try:
                out = []
                for b in bodies:
                    if isinstance(b, tuple):
                        out.append(how(rt, b[0], **b[1]))
                    else:
                        out.append(how(rt, b))
                return out
            finally:
                rt.close()

        return run

    unicode_payload = {
        "text": 'ünïcödé 日本語 😀 \u2028\u2029 "quoted" \\ \n\t\r\b\f \x00\x1f\x7f',
        "ключ": ["é", {"z": 1, "a": -0.0, "m": 1e16, "s": 1e-7}],
        "big_int": -(2**70),
        "float": 1234.5678e100,
        "nested": [[[[{"deep": [1.25, "x", None, True, False]}]]]],
    }
    yield "direct", one(runtime, req({"document_id": "doc-1"}, target="echo"))
    yield "direct_first_candidate", one(runtime, req({"k": "v"}))
    yield "direct_pooled", one(runtime, req({"k": "v"}, target="echo"), how=pooled)
    yield "unicode", one(runtime, req(unicode_payload, target="echo"))
    yield "unicode_text_body", one(runtime, req(unicode_payload, target="echo").decode())
    yield "dict_body", one(runtime, json.loads(req({"x": [1, 2]}, target="empty")))
    yield "no_request_id", one(runtime, req({"x": 1}, rid=None, target="echo"))
    yield (
        "transport_context",
        one(
            runtime,
            (
                req({"x": 1}, rid=None, target="echo"),
                {
                    "context": RequestContext(
                        message_id="msg-1",
                        user_id="alice",
                        traceparent="00-" + "ab" * 16 + "-" + "cd" * 8 + "-01",
                        redelivered=True,
                    ),
                    "content_type": "application/json; charset=utf-8",
                    "correlation_id": "corr-1",
                },
            ),
        ),
    )
    full = req(
        {"x": 1},
        strategy="direct",
        target="echo",
        context={
            "sourceAgent": "tester",
            "timestamp": "2024-02-01T00:00:00+01:00",
            "priority": "high",
            "tags": ["t1", "ü"],
        },
        metadata={
            "requestId": "g-full",
            "source": "suite",
            "createdAt": "2024-02-01T00:00:00Z",
            "traceId": "trace-given",
            "identityChain": ["a", "b"],
        },
    )
    yield "all_fields", one(runtime, full)
    yield "agent_error", one(runtime, req({"x": 1}, target="unavailable"))
    yield "agent_exception", one(runtime, req({"x": 1}, target="crashes"))
    yield "agent_not_a_dict", one(runtime, req({"x": 1}, target="notdict"))
    yield "agent_surrogate", one(runtime, req({"x": 1}, target="surrogate"))
    yield (
        "fallback",
        one(runtime, req({"x": 1}, strategy="FALLBACK", target="unavailable", fallbacks=["echo"])),
    )
    yield (
        "fallback_all_fail",
        one(
            runtime,
            req(
                {"x": 1},
                strategy="FALLBACK",
                target="unavailable",
                fallbacks=["crashes", "notdict"],
            ),
        ),
    )
    yield "fallback_registry_order", one(runtime, req({"x": 1}, strategy="FALLBACK"))
    yield "broadcast", one(runtime, req({"x": 1}, strategy="BROADCAST"))
    yield (
        "parallel_one",
        one(runtime, req({"x": 1}, strategy="parallel", intent="SoloIntent", intent_version="2.0")),
    )
    yield "parallel_straggler", _parallel
    yield "no_candidate", one(runtime, req({"x": 1}, intent="NobodyIntent"))
    yield "wrong_version", one(runtime, req({"x": 1}, intent="SoloIntent"))
    yield "not_a_candidate", one(runtime, req({"x": 1}, target="ghost"))
    yield (
        "policy",
        one(
            lambda: runtime(policy=POLICY),
            (req({"x": 1}, target="crashes"), {"context": RequestContext(user_id="bob")}),
            (
                req({"x": 1}, rid="g-2", strategy="FALLBACK"),
                {"context": RequestContext(user_id="bob")},
            ),
            req({"x": 1}, rid="g-3", intent="SecretIntent"),
        ),
    )
    yield "big_payload", one(runtime, req({"blob": "ü€😀" * 8_000}, intent="BigIntent"))
    yield (
        "message_id",
        one(runtime, (req({"x": 1}, rid=None), {"context": RequestContext(message_id="m-1")})),
    )
    yield "async_agent", one(runtime, req({"x": 1}, intent="AsyncIntent"), how=pooled)
    yield "middleware", one(lambda: runtime(middleware=[Tagger()]), req({"x": 1}, target="echo"))
    yield (
        "duplicates",
        one(
            runtime,
            req({"x": 1}, target="echo"),
            req({"x": 1}, target="echo"),
            req({"x": 2}, target="echo"),
            (req({"x": 1}, target="echo"), {"context": RequestContext(user_id="mallory")}),
            b"{not json",
            b"{not json",
        ),
    )
    yield (
        "in_doubt",
        one(lambda: runtime(store=FailOnce()), req({"x": 1}, target="echo"), how=_in_doubt),
    )
    yield "timeout", _timeout
    odd_json = [
        b' \r\n\t{"version":"1.0","intent":{"name":"Nope"},"intent":{"name":"GoldenIntent"},'
        b'"payload":{"a":1,"b":2,"a":3},"metadata":{"requestId":"o-1"},'
        b'"routing":{"targetAgent":"echo"}}\n ',
        b'{"version":"1.0","intent":{"name":"GoldenIntent"},"routing":{"targetAgent":"echo"},'
        b'"metadata":{"requestId":"o-2"},"payload":{"i":123456789012345678901234567890,'
        b'"f":0.30000000000000004,"g":2.2250738585072014e-308,"h":-0,"e":1E5,"d":-0.0,'
        b'"k":1.7976931348623157e308,"l":5e-324,"m":123456789.123456789e-3,"n":1.0,'
        b'"s":"\\/\\u00e9\\ud83d\\ude00\\u0000","t":[],"u":{}}}',
        b'{"version":"1.0","intent":{"name":"GoldenIntent","version":"1.0"},'
        b'"payload":{"z":{"y":{"x":[1,[2,[3]]]}}},"metadata":{"requestId":"o-3","traceId":"T"},'
        b'"routing":{"strategy":"Fallback","fallbackAgents":["echo","echo"]},'
        b'"context":{"priority":"Critical","timestamp":null,"tags":[]}}',
    ]
    yield "odd_json", one(runtime, *odd_json)
    rejected: list[Any] = [
        b"",
        b"{not json",
        b'{"version": "1.0", "intent": {"name": "I"}} trailing',
        b"\xff\xfe not utf-8",
        b'{"version": "1.0", "intent": {"name": "\\ud800"}}',
        b'{"version": "1.0", "intent": {"name": "I"}, "payload": {"x": NaN}}',
        b'{"version": "1.0", "intent": {"name": "I"}, "payload": {"x": 1e400}}',
        b'{"version": "1.0", "intent": {"name": "I"}, "payload": {"x": "\x01"}}',
        b"[1, 2]",
        b'"a string"',
        b"null",
        b'{"intent": {"name": "I"}}',
        b'{"version": "2.0", "intent": {"name": "I"}}',
        b'{"version": "1.0", "intent": {"name": ""}}',
        b'{"version": "1.0", "intent": {"name": "I"}, "extra": 1}',
        b'{"version": "1.0", "intent": {"name": "I"}, "routing": {"strategy": "RANDOM"}}',
        b'{"version": "1.0", "intent": {"name": "I"}, "context": {"timestamp": "yesterday"}}',
        b'{"version": "1.0", "intent": {"name": "I"}, "context": {"priority": 5}}',
        b'{"version": "1.0", "intent": {"name": "I"}, "payload": [1]}',
        b'{"version": "1.0", "intent": {"name": "I"}, "metadata": {"requestId": ""}}',
        req({"x": 1}, rid="x" * 1025),
        req({"x": 1}, strategy="BROADCAST", target="echo"),
        req({"x": 1}, strategy="PARALLEL", fallbacks=["echo"]),
        req({"deep": json.loads("[" * 70 + "]" * 70)}),
        b'{"version": "1.0", "intent": {"name": "I"}, "metadata": {"requestId": "r-bad"}, "x": 1}',
        b'\xef\xbb\xbf{"version": "1.0", "intent": {"name": "I"}}',
        b'{"version": "1.0", "intent": {"name": "I"}, "payload": {"x": Infinity}}',
        b'{"version": "1.0", "intent": {"name": "I"}, "payload": {"x": -1e99999}}',
        b'{"version": "1.0", "intent": {"name": "I"}, "payload": {"x": 01}}',
        b'{"version": "1.0", "intent": {"name": "I"}, "payload": {"x": "\\x"}}',
        b'{"version": "1.0", "intent": {"name": "I"}, "payload": {"x": "\\udc00"}}',
        b'{"version": "1.0", "intent": {"name": "I"},}',
        b'{"version": "1.0", "intent": {"name": "I"}, "metadata": {"requestId": 5}}',
        b'{"version": "1.0", "intent": {"name": 5}}',
        b'{"version": 1.0, "intent": {"name": "I"}}',
        b'{"version": "1.0", "intent": {"name": "I"}, "context": {"tags": "t"}}',
        b'{"version": "1.0", "intent": {"name": "I"}, "routing": {"strategy": null}}',
        b'{"version": "1.0", "intent": {"name": "I"}, "routing": {"targetAgent": 1}}',
        b'{"version": "1.0", "intent": {"name": "I", "version": ""}, "payload": {}}',
        b'{"version": "1.0", "intent": {"name": "I"}, "payload": {"x": ['
        + b"[" * 70
        + b"]" * 71
        + b"}}",
        b'{"version": "1.0", "intent": {"name": "I"}, "payload": null}',
        b'{"version": "1.0", "intent": null}',
        '{"version": "1.0", "intent": {"name": "\ud800"}}',
        {"version": "1.0", "intent": {"name": "I"}, "payload": {"x": float("nan")}},
        {"version": "1.0", "intent": {"name": "I"}, "payload": {"x": object()}},
        (req({"x": 1}), {"content_type": "text/plain"}),
        (b"{not json", {"content_type": "text/plain"}),
    ]
    for index, bad in enumerate(rejected):
        yield f"rejected_{index}", one(runtime, bad)
    yield "too_large", one(lambda: runtime(max_message_bytes=200), req({"x": "y" * 300}))


def _in_doubt(rt: IntentusRuntime, body: bytes) -> Result:
    """The record cannot be written: the claim stays held; the re-sent request is in doubt."""
    try:
        inline(rt, body)
    except RecordStoreError:
        pass
    else:  # pragma: no cover - the store fails once
        raise AssertionError("the first write should fail")
    return inline(rt, body)


def _parallel() -> list[Result]:
    """PARALLEL: the first success answers, the straggler is left behind (detached)."""
    release = threading.Event()

    def slow(env: Any) -> dict[str, Any]:
        release.wait(30)
        return {"slow": True}

    reg = registry()
    reg.register("pa_ok", echo, intents=["RaceIntent"])
    reg.register("pa_slow", slow, intents=["RaceIntent"])
    rt = IntentusRuntime(reg, worker_id="golden", clock=FixedClock(step_s=0.001))
    try:
        return [inline(rt, req({"x": 1}, strategy="PARALLEL", intent="RaceIntent"))]
    finally:
        release.set()
        rt.close()


def _timeout() -> list[Result]:
    """An inline handler past its deadline: the request goes on without it."""
    release = threading.Event()

    def stuck(env: Any) -> dict[str, Any]:
        release.wait(30)
        return {"late": True}

    reg = registry()
    reg.register("stuck", stuck, intents=["StuckIntent"], timeout_s=0.05)
    rt = IntentusRuntime(reg, worker_id="golden", clock=FixedClock(step_s=0.001))
    delivered: queue.SimpleQueue[Outcome] = queue.SimpleQueue()

    def route() -> None:
        try:
            rt.process_inline(
                req({"x": 1}, intent="StuckIntent"),
                deliver=lambda o: delivered.put(rt.commit_sync(o)),
            )
        except Abandoned:
            pass

    thread = threading.Thread(target=route)
    thread.start()
    try:
        outcome = delivered.get(timeout=30)
    finally:
        release.set()
        thread.join(30)
        rt.close()
    return [result(outcome)]


def run_all() -> dict[str, list[Result]]:
    return {name: run() for name, run in scenarios()}


def test_records_and_replies_are_byte_for_byte_the_golden_ones() -> None:
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    got = run_all()
    assert sorted(got) == sorted(golden)
    for name, expected in golden.items():
        assert got[name] == expected, name


if __name__ == "__main__":  # pragma: no cover - regenerates the golden file
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.unit.test_golden_records --write")
    GOLDEN.parent.mkdir(exist_ok=True)
    text = json.dumps(run_all(), indent=1, ensure_ascii=False, sort_keys=True)
    GOLDEN.write_text(text + "\n", encoding="utf-8")
