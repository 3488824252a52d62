"""Security checks: secrets never leak, record modes, no paths from content, policy by the
broker-validated user_id, TLS, and resource limits (size before parsing, depth, globs)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pika
import pika.exceptions
import pytest

from runtime.policy import Policy, PolicyDocument, PolicySubject
from tests.faults.brokerctl import TempUser, ctl, require_rabbitmqctl
from tests.faults.load import Message, Publisher, record_files, report, request

pytestmark = pytest.mark.integration


def _send(queue: str, messages: list[Message], url: str | None = None) -> None:
    p = Publisher(queue, url=url) if url else Publisher(queue)
    try:
        p.publish_all(messages)
    finally:
        p.close()


def _answers(replies, messages, timeout=20):
    assert replies.wait_for({m.correlation_id for m in messages}, timeout=timeout)
    return [replies.first(m.correlation_id) for m in messages]


def test_password_never_leaks(start_worker, replies, agent_env, queue_name, tmp_path):
    """A distinctive password stays out of logs, records, /metrics, /readyz and error output."""
    require_rabbitmqctl()
    secret = f"Zq9-{uuid.uuid4().hex}-pw"
    with TempUser(f"intentus-sec-{uuid.uuid4().hex[:8]}", secret) as user:
        w = start_worker(env={**agent_env, "INTENTUS_AMQP_URL": user.url})
        messages = [
            request("ProcessIntent", {"n": 1}, replies.queue),
            Message(b"not json", correlation_id=uuid.uuid4().hex, reply_to=replies.queue),
            request("NoSuchIntent", {}, replies.queue),
        ]
        _send(queue_name, messages)
        _answers(replies, messages)
        metrics = w.http("/metrics")[1] + w.http("/readyz")[1] + w.http("/healthz")[1]
        assert w.stop() == 0
        # A refused login: the error names the broker, never the password tried.
        wrong = f"Wr0ng-{uuid.uuid4().hex}"
        bad = start_worker(
            env={**agent_env, "INTENTUS_AMQP_URL": user.url.replace(secret, wrong)}, wait=False
        )
        code = bad.wait(timeout=30)
        bad_log = bad.logs()
    haystacks = {
        "worker log": w.logs().encode(),
        "failed-login log": bad_log.encode(),
        "metrics/health": metrics,
        "records": b"".join(p.read_bytes() for p in w.records_dir.rglob("*") if p.is_file()),
    }
    leaks = {
        name: [s for s in (secret, wrong) if s.encode() in data] for name, data in haystacks.items()
    }
    report(
        {
            "scenario": "security-password",
            "login_refused_exit_code": code,
            "bytes_searched": {k: len(v) for k, v in haystacks.items()},
            "leaks": {k: v for k, v in leaks.items() if v},
        }
    )
    assert code == 3, bad_log
    assert "***" in w.logs()
    assert not any(leaks.values()), leaks


def test_record_modes_and_no_path_from_content(
    start_worker, replies, agent_env, queue_name, tmp_path
):
    """Under umask 000 every record file is 0640 and every folder 0750; requestIds that look
    like paths never become paths."""
    old = os.umask(0)
    try:
        w = start_worker(env=agent_env)
    finally:
        os.umask(old)
    hostile = ["../../escape", "/tmp/abs-intentus", "..", "a/b/c", "exec-../../x", "%2e%2e/y"]
    messages = [
        request("ProcessIntent", {"n": i}, replies.queue, request_id=r)
        for i, r in enumerate(hostile)
    ]
    messages.append(
        Message(b"\xff garbage", correlation_id=uuid.uuid4().hex, reply_to=replies.queue)
    )
    _send(queue_name, messages)
    _answers(replies, messages)
    assert w.stop() == 0
    records = w.records_dir
    bad_modes = []
    for p in [records, *records.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        want = 0o750 if p.is_dir() else 0o640
        if mode != want:
            bad_modes.append((str(p.relative_to(records)), oct(mode)))
    names = [p.name for p in records.rglob("*") if p.is_file()]
    strays = [n for n in names if not (n.startswith("exec-") or n.endswith(".journal"))]
    escaped = [p for p in (tmp_path.parent / "escape", Path("/tmp/abs-intentus")) if p.exists()]
    report(
        {
            "scenario": "security-modes-paths",
            "files": len(names),
            "record_files": len(record_files(records)),
            "wrong_modes": bad_modes,
            "unexpected_names": strays,
            "escaped_paths": [str(p) for p in escaped],
        }
    )
    assert not bad_modes and not strays and not escaped
    assert len(record_files(records)) == len(messages)


def test_policy_by_broker_validated_user_id(start_worker, replies, agent_env, queue_name, tmp_path):
    """SecretIntent only for alice-*: alice succeeds, bob is UNAUTHORIZED (with or without a
    user_id), and bob forging alice's user_id is refused by the broker."""
    require_rabbitmqctl()
    suffix = uuid.uuid4().hex[:8]
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "default": "allow",
                "rules": [
                    {
                        "id": "alice-secret",
                        "action": "allow",
                        "intents": ["SecretIntent"],
                        "users": ["alice-*"],
                    },
                    {"id": "secret-for-nobody-else", "action": "deny", "intents": ["SecretIntent"]},
                ],
            }
        )
    )
    w = start_worker(env={**agent_env, "INTENTUS_POLICY_FILE": str(policy)})
    with (
        TempUser(f"alice-{suffix}", uuid.uuid4().hex) as alice,
        TempUser(f"bob-{suffix}", uuid.uuid4().hex) as bob,
    ):
        as_alice = request("SecretIntent", {}, replies.queue)
        as_alice.user_id = alice.name
        as_bob = request("SecretIntent", {}, replies.queue)
        as_bob.user_id = bob.name
        bob_anonymous = request("SecretIntent", {}, replies.queue)
        _send(queue_name, [as_alice], alice.url)
        bp = Publisher(queue_name, url=bob.url, retry_for_s=0)
        bp.publish_all([as_bob, bob_anonymous])
        bp.close()
        got = _answers(replies, [as_alice, as_bob, bob_anonymous])
        received_before = w.metric("intentus_messages_received_total")
        conn = pika.BlockingConnection(pika.URLParameters(bob.url))
        refused = None
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            ch.basic_publish(
                "",
                queue_name,
                request("SecretIntent", {}).body,
                pika.BasicProperties(user_id=alice.name, reply_to=replies.queue),
            )
        except pika.exceptions.ChannelClosedByBroker as exc:
            refused = (exc.reply_code, exc.reply_text)
        finally:
            if conn.is_open:
                conn.close()
    time.sleep(1.0)
    received_after = w.metric("intentus_messages_received_total")
    codes = [r.code or "success" for r in got]
    report(
        {
            "scenario": "security-user-id-policy",
            "alice": codes[0],
            "bob_with_user_id": codes[1],
            "bob_without_user_id": codes[2],
            "bob_reasons": got[1].json["error"]["message"] if got[1].code else None,
            "forged_user_id_refused": refused,
            "forged_reached_worker": received_after - received_before,
        }
    )
    assert codes == ["success", "UNAUTHORIZED", "UNAUTHORIZED"], codes
    assert refused is not None and refused[0] == 406, refused
    assert received_after == received_before
    assert w.stop() == 0


@pytest.fixture
def tls_listener():
    """A TLS listener on the running broker (started and stopped with rabbitmqctl eval, no
    broker restart), with a self-signed certificate for localhost."""
    require_rabbitmqctl()
    # The broker runs as its own user: the files go where it can read them.
    folder = Path(tempfile.mkdtemp(prefix="intentus-tls-"))
    folder.chmod(0o755)
    try:
        yield from _listener(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _listener(tmp_path: Path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        capture_output=True,
    )  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"openssl cannot make a certificate here: {made.stderr[-300:]!r}")
    os.chmod(key, 0o644)
    from tests.support.workerproc import free_port

    port = free_port()
    expr = (
        f'rabbit_networking:start_ssl_listener({port}, [{{certfile, "{cert}"}}, '
        f'{{keyfile, "{key}"}}], 1, 1).'
    )
    out = ctl("eval", expr, check=False)
    if out.returncode != 0 or "ok" not in out.stdout:
        pytest.skip(f"the broker cannot open a TLS listener at run time: {out.stdout[-300:]}")
    try:
        yield port, cert
    finally:
        ctl("eval", f"rabbit_networking:stop_tcp_listener({port}).", check=False)


def test_tls_amqps(start_worker, replies, agent_env, queue_name, tls_listener):
    """amqps:// verifies the server certificate: refused (exit 3) with an unknown CA, works
    once the CA is trusted (SSL_CERT_FILE), and serves requests over TLS."""
    port, cert = tls_listener
    url = f"amqps://guest:guest@localhost:{port}/%2F"
    untrusted = start_worker(env={**agent_env, "INTENTUS_AMQP_URL": url}, wait=False)
    untrusted_code = untrusted.wait(timeout=30)
    w = start_worker(env={**agent_env, "INTENTUS_AMQP_URL": url, "SSL_CERT_FILE": str(cert)})
    m = request("ProcessIntent", {"n": 1}, replies.queue)
    _send(queue_name, [m])
    (reply,) = _answers(replies, [m])
    report(
        {
            "scenario": "security-tls",
            "untrusted_ca_exit_code": untrusted_code,
            "untrusted_reason": [
                line for line in untrusted.logs().splitlines() if "certif" in line.lower()
            ][-1:],
            "trusted_reply": reply.code or "success",
        }
    )
    assert untrusted_code == 3, untrusted.logs()
    assert reply.code is None
    assert w.stop() == 0


def test_resource_limits(start_worker, replies, agent_env, queue_name):
    """Size is checked before parsing; nesting is bounded; both answered quickly."""
    w = start_worker(env={**agent_env, "INTENTUS_MAX_MESSAGE_BYTES": "200000"})
    too_big = Message(b"[" * 300_000, correlation_id=uuid.uuid4().hex, reply_to=replies.queue)
    deep_65 = request("ProcessIntent", {}, replies.queue)
    deep_65.body = deep_65.body.replace(b'"payload":{}', b'"payload":' + b"[" * 64 + b"]" * 64)
    deep_100k = Message(
        b"[" * 100_000 + b"]" * 100_000, correlation_id=uuid.uuid4().hex, reply_to=replies.queue
    )
    ok_64 = request("ProcessIntent", {}, replies.queue)
    ok_64.body = ok_64.body.replace(
        b'"payload":{}', b'"payload":{"d":' + b"[" * 60 + b"]" * 60 + b"}"
    )
    messages = [too_big, deep_65, deep_100k, ok_64]
    t0 = time.monotonic()
    _send(queue_name, messages)
    got = _answers(replies, messages)
    elapsed = time.monotonic() - t0
    codes = [r.code or "success" for r in got]
    # Globs only, and fnmatch does not backtrack catastrophically on hostile input.
    doc = PolicyDocument.model_validate(
        {"rules": [{"id": "r", "action": "deny", "users": ["*a" * 100 + "b"]}]}
    )
    subject = PolicySubject("I", "1.0", ("s",), "a" * 100_000, ())
    g0 = time.monotonic()
    decision = Policy(doc).evaluate(["x"], subject)
    glob_s = time.monotonic() - g0
    report(
        {
            "scenario": "security-limits",
            "too_big_unparsable": codes[0],
            "depth_65": codes[1],
            "depth_100k": codes[2],
            "depth_61_ok": codes[3],
            "answered_in_s": round(elapsed, 2),
            "hostile_glob_s": round(glob_s, 4),
        }
    )
    assert codes == ["PAYLOAD_TOO_LARGE", "VALIDATION_ERROR", "VALIDATION_ERROR", "success"]
    assert decision.allowed == ["x"]
    assert glob_s < 1.0
    assert w.stop() == 0
