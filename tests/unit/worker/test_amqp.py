"""Pure parts of the AMQP module: correlation ids that fit, queue arguments."""

from __future__ import annotations

import hashlib

from worker.amqp import MAX_SHORTSTR, fit_correlation_id, queue_arguments
from worker.config import Config


class TestFitCorrelationId:
    def test_short_id_unchanged(self) -> None:
        """An id that fits travels as is, with no header."""
        assert fit_correlation_id("c-1") == ("c-1", None)

    def test_255_bytes_still_fit(self) -> None:
        """Exactly 255 bytes is still a valid correlation_id."""
        cid = "x" * MAX_SHORTSTR
        assert fit_correlation_id(cid) == (cid, None)

    def test_long_id_becomes_a_digest_and_a_header(self) -> None:
        """Over 255 bytes: a fixed-length sha256 digest, and the whole id for the header."""
        cid = "r" * 1024
        prop, header = fit_correlation_id(cid)
        assert prop == "sha256:" + hashlib.sha256(cid.encode()).hexdigest()
        assert len(prop) == 71
        assert header == cid

    def test_multibyte_counted_in_bytes(self) -> None:
        """200 characters of 2 bytes each are 400 bytes: too long."""
        prop, header = fit_correlation_id("é" * 200)
        assert prop.startswith("sha256:") and header == "é" * 200


class TestQueueArguments:
    def test_quorum_has_a_delivery_limit(self) -> None:
        """Quorum queues carry the delivery limit and the dead-letter exchange."""
        args = queue_arguments(Config(queue="q", queue_type="quorum", delivery_limit=5))
        assert args["x-queue-type"] == "quorum"
        assert args["x-dead-letter-exchange"] == "q.dlx"
        assert args["x-delivery-limit"] == 5

    def test_classic_has_none(self) -> None:
        """Classic queues have no delivery limit."""
        assert "x-delivery-limit" not in queue_arguments(Config(queue="q", queue_type="classic"))


def test_only_the_amqp_package_imports_pika() -> None:
    """pika stays behind worker/amqp/: no other module of the worker or runtime imports it."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    importing = re.compile(r"^\s*(import pika|from pika)\b", re.MULTILINE)
    outside = [
        str(path.relative_to(root))
        for package in ("runtime", "worker")
        for path in sorted((root / package).rglob("*.py"))
        if "amqp" not in path.relative_to(root).parts and importing.search(path.read_text())
    ]
    assert outside == []
