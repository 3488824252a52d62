"""The worker's runtime and its execution store, opened from the configuration; a store that
cannot be used is a RecordsUnusable naming the option to fix."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from runtime.claims import new_owner_token
from runtime.engine import IntentusRuntime
from runtime.errors import IntentusError, RecordStoreError
from runtime.middleware import Middleware
from runtime.observer import Observer
from runtime.policy import Policy
from runtime.registry import AgentRegistry
from runtime.stores.base import RecordStore
from worker.config import Config, mask_url, option_error
from worker.errors import RecordsUnusable

MEMORY_RECORDS = ":memory:"


def open_postgres_store(cfg: Config) -> RecordStore:
    """The PostgreSQL execution store for this worker (the `postgres` extra)."""
    from runtime.stores.postgres import PostgresRecordStore

    return PostgresRecordStore(
        cfg.records_url,
        owner=new_owner_token(cfg.worker_id),
        pool_size=cfg.concurrency + 2,
    )


def open_runtime(
    cfg: Config,
    registry: AgentRegistry,
    *,
    policy: Policy | None,
    middleware: Sequence[Middleware],
    observer: Observer,
    carry_on: Callable[[Callable[[], None]], None],
    resume: Callable[[Callable[[], None]], None],
) -> IntentusRuntime:
    """The runtime over the configured store, checked writable; `observer`, `carry_on` and
    `resume` are the worker's (its middleware chain, and its routing threads)."""
    # ":memory:" keeps records in process memory: for benchmarks only (nothing is durable).
    records_dir = None if cfg.records_dir == MEMORY_RECORDS else cfg.records_dir
    option = "records_url" if cfg.records_url else "records_dir"
    where = mask_url(cfg.records_url) if cfg.records_url else cfg.records_dir
    try:
        store = None
        if cfg.records_url:
            store = open_postgres_store(cfg)
        elif records_dir is not None:
            os.makedirs(records_dir, mode=0o750, exist_ok=True)
        runtime = IntentusRuntime(
            registry,
            store=store,
            records_dir=records_dir,
            policy=policy,
            middleware=middleware,
            agent_timeout_s=cfg.agent_timeout_s,
            max_message_bytes=cfg.max_message_bytes,
            worker_id=cfg.worker_id,
            observer=observer,
            carry_on=carry_on,
            resume=resume,
        )
        runtime.store.check_writable()
    except (OSError, RecordStoreError) as exc:
        why = f"{where!r} is not usable: {exc}"
        raise RecordsUnusable(str(option_error(option, why))) from exc
    except IntentusError as exc:
        raise RecordsUnusable(str(option_error(option, f"{where!r}: {exc}"))) from exc
    return runtime
