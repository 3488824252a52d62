"""Start-up failures: each a clear message and its documented exit code, never a crash loop."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Agents
from tests.integration.wire import queue_type
from tests.support.broker import connection, delete_topology
from tests.support.workerproc import WorkerProcess, free_port

pytestmark = pytest.mark.integration


def failed_start(
    start: Callable[..., WorkerProcess], timeout: float = 30.0, **kw: object
) -> tuple[int, str]:
    worker = start(wait=False, **kw)
    code = worker.wait(timeout=timeout)
    return code, worker.logs()


def test_queue_declared_with_other_arguments(
    start_worker: Callable[..., WorkerProcess], queue_name: str
) -> None:
    """A request queue that exists with other arguments → exit 3 naming the queue."""
    conn = connection()
    try:
        conn.channel().queue_declare(
            queue_name, durable=True, arguments={"x-queue-type": "classic"}
        )
    finally:
        conn.close()
    code, log = failed_start(start_worker, timeout=20)
    assert code == 3, log
    assert queue_name in log
    assert "argument" in log.lower()
    assert "Traceback" not in log


def test_existing_queue_with_the_same_arguments_is_fine(
    start_worker: Callable[..., WorkerProcess], agents: Agents
) -> None:
    """A restart finds its own topology and starts normally."""
    first = start_worker(env=agents.env)
    assert first.stop() == 0
    second = start_worker(env=agents.env)
    assert second.ready()


def test_queue_types(start_worker: Callable[..., WorkerProcess], queue_name: str) -> None:
    """The request queue is quorum by default; INTENTUS_QUEUE_TYPE=classic selects classic."""
    worker = start_worker()
    assert queue_type(queue_name) == "quorum"
    assert queue_type(f"{queue_name}.dlq") is not None
    conn = connection()
    try:
        conn.channel().exchange_declare(f"{queue_name}.dlx", passive=True)  # 404 if missing
    finally:
        conn.close()
    assert queue_type(worker.reply_queue) is not None
    assert worker.stop() == 0
    delete_topology(queue_name, worker.reply_queue)
    start_worker(env={"INTENTUS_QUEUE_TYPE": "classic"})
    assert queue_type(queue_name) == "classic"


def test_broker_unreachable(start_worker: Callable[..., WorkerProcess]) -> None:
    """A URL to a closed port → exit 3, and the password is never logged."""
    url = f"amqp://guest:s3cret-pw@127.0.0.1:{free_port()}/%2F"
    code, log = failed_start(start_worker, env={"INTENTUS_AMQP_URL": url})
    assert code == 3, log
    assert "s3cret-pw" not in log
    assert "127.0.0.1" in log
    assert "Traceback" not in log


def test_wrong_password(start_worker: Callable[..., WorkerProcess]) -> None:
    """The broker refusing the login → exit 3 without the password in the log."""
    url = "amqp://guest:not-the-password@127.0.0.1:5672/%2F"
    code, log = failed_start(start_worker, env={"INTENTUS_AMQP_URL": url})
    assert code == 3, log
    assert "not-the-password" not in log


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("INTENTUS_CONCURRENCY", "lots"),
        ("INTENTUS_CONCURRENCY", "0"),
        ("INTENTUS_PREFETCH", "-3"),
        ("INTENTUS_AGENT_TIMEOUT_S", "soon"),
        ("INTENTUS_AGENT_TIMEOUT_S", "-1"),
        ("INTENTUS_MAX_MESSAGE_BYTES", "big"),
        ("INTENTUS_QUEUE_TYPE", "stream"),
        ("INTENTUS_LOG_FORMAT", "xml"),
        ("INTENTUS_METRICS_ADDR", "nowhere"),
        ("INTENTUS_AMQP_URL", "http://127.0.0.1:5672/"),
        ("INTENTUS_SHUTDOWN_GRACE_S", "-5"),
        ("INTENTUS_AGENTS", "no_such_module_here:registry"),
        ("INTENTUS_AGENTS", "not-a-spec"),
    ],
)
def test_bad_configuration_value(
    start_worker: Callable[..., WorkerProcess], variable: str, value: str
) -> None:
    """An invalid value → exit 2 with a line `INTENTUS_X (--x): why`."""
    code, log = failed_start(start_worker, env={variable: value})
    assert code == 2, log
    flag = "--" + variable.removeprefix("INTENTUS_").lower().replace("_", "-")
    assert f"{variable} ({flag}): " in log
    assert "Traceback" not in log


def test_bad_flag_value(start_worker: Callable[..., WorkerProcess]) -> None:
    """Flags are checked the same way as the environment."""
    code, log = failed_start(start_worker, args=["--concurrency", "many"])
    assert code == 2, log
    assert "INTENTUS_CONCURRENCY" in log or "--concurrency" in log


def test_flag_wins_over_environment(
    start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """A flag overrides its INTENTUS_* variable."""
    code, log = failed_start(
        start_worker, env={"INTENTUS_LOG_FORMAT": "json"}, args=["--log-format", "yaml"]
    )
    assert code == 2, log
    assert "yaml" in log


def test_records_folder_unusable(
    start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """A records folder that cannot be created → exit 4."""
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    code, log = failed_start(start_worker, records_dir=blocker / "records")
    assert code == 4, log
    assert str(blocker) in log
    assert "Traceback" not in log


def test_metrics_port_taken(start_worker: Callable[..., WorkerProcess]) -> None:
    """A metrics port already in use → a clear error naming it and a non-zero exit."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, log = failed_start(start_worker, env={"INTENTUS_METRICS_ADDR": f"127.0.0.1:{port}"})
    assert code != 0, log
    assert str(port) in log
    assert "INTENTUS_METRICS_ADDR (--metrics-addr): cannot listen" in log
    assert "Traceback" not in log


def test_invalid_policy_file(start_worker: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    """A policy file that does not parse → exit 2 with its line and reason."""
    policy = tmp_path / "policy.json"
    policy.write_text('{\n  "default": "allow",\n  "rules": [ oops ]\n}\n')
    code, log = failed_start(start_worker, env={"INTENTUS_POLICY_FILE": str(policy)})
    assert code == 2, log
    assert "line 3" in log
    assert "Traceback" not in log


def test_policy_rule_with_a_bad_action(
    start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """A policy rule that does not validate → exit 2 naming its line."""
    policy = tmp_path / "policy.json"
    document = {"default": "allow", "rules": [{"id": "r1", "action": "maybe"}]}
    policy.write_text(json.dumps(document, indent=2))
    code, log = failed_start(start_worker, env={"INTENTUS_POLICY_FILE": str(policy)})
    assert code == 2, log
    assert "line 4" in log
    assert "action" in log


def test_missing_policy_file(start_worker: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    """A policy file that does not exist → exit 2."""
    code, log = failed_start(
        start_worker, env={"INTENTUS_POLICY_FILE": str(tmp_path / "absent.json")}
    )
    assert code == 2, log
    assert "absent.json" in log


def test_database_unreachable(start_worker: Callable[..., WorkerProcess]) -> None:
    """A PostgreSQL records URL to a closed port → exit 4, the password never shown."""
    url = f"postgresql://intentus:s3cret-db@127.0.0.1:{free_port()}/records"
    code, log = failed_start(start_worker, env={"INTENTUS_RECORDS_URL": url})
    assert code == 4, log
    assert "INTENTUS_RECORDS_URL (--records-url)" in log
    assert "s3cret-db" not in log
    assert "Traceback" not in log


def test_database_url_with_another_scheme(start_worker: Callable[..., WorkerProcess]) -> None:
    """A records URL that is not postgresql:// → exit 2, masked."""
    code, log = failed_start(start_worker, env={"INTENTUS_RECORDS_URL": "mysql://u:pw-x@h/db"})
    assert code == 2, log
    assert "INTENTUS_RECORDS_URL (--records-url)" in log
    assert "pw-x" not in log
