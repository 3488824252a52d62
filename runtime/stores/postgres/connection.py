"""The connection pool every part of the PostgreSQL store shares, and its error wording."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from runtime.errors import RecordStoreError
from runtime.stores.postgres.schema import mask, psycopg_module

log = logging.getLogger("intentus.runtime.stores.postgres")


# The liveness session's server side. A worker whose host dies (power, kernel panic, a cut
# network) sends no FIN: by default the server keeps its session, and so its advisory lock and
# its claims, until its own TCP keepalive gives up (2 h 11 min with Linux defaults). These are
# per-session settings, so only the liveness session is tuned: the server drops it when the
# worker has sent nothing for LIVENESS_IDLE_S (it pings every second), or when the peer stops
# acknowledging (keepalive probes, unacknowledged data).
LIVENESS_IDLE_S = 20
LIVENESS_SETTINGS = {
    "idle_session_timeout": f"{LIVENESS_IDLE_S * 1000}",
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "3",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": f"{LIVENESS_IDLE_S * 1000}",
}


def open_liveness_session(psycopg: Any, url: str) -> Any:
    """An autocommit connection whose session the server ends soon after the worker is gone.

    The client side probes too (keepalives), so a dead server is noticed as well. The settings
    are applied with SET, which a pooler in session mode passes on (a startup `options`
    parameter it may refuse); a server that refuses one (older than PostgreSQL 14 has no
    idle_session_timeout) leaves it at its default rather than failing the worker."""
    conn = psycopg.connect(
        url,
        autocommit=True,
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
    )
    for name, value in LIVENESS_SETTINGS.items():
        try:
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        except psycopg.Error as exc:
            log.warning("liveness session: cannot set %s: %s", name, str(exc).strip())
    return conn


class Connected:
    """A pool of autocommit connections to the store's database."""

    url: str
    pool: Any

    def __init__(self, url: str) -> None:
        self.url = url
        self._psycopg = psycopg_module()

    def _connect(self, pool_size: int, setup: Callable[[], None]) -> None:
        """Open the pool, then `setup`; on failure close what was opened and raise."""
        from psycopg_pool import ConnectionPool

        try:
            self.pool = ConnectionPool(
                self.url,
                min_size=1,
                max_size=max(2, pool_size),
                kwargs={"autocommit": True},
                open=False,
                name="intentus",
            )
            self.pool.open(wait=True, timeout=10)
            setup()
        except RecordStoreError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise self._error("cannot open the PostgreSQL store", exc) from None

    def _error(self, what: str, exc: BaseException) -> RecordStoreError:
        return RecordStoreError(mask(self.url, f"{what}: {str(exc).strip() or type(exc).__name__}"))

    def _answered(self, exc: BaseException) -> bool:
        """Whether the database answered with an error, its session still usable (not a lost
        connection, a shutdown or a resource running out: those are the store's)."""
        psycopg = self._psycopg
        if isinstance(exc, psycopg.errors.ProgramLimitExceeded):
            return True
        return isinstance(exc, psycopg.DatabaseError) and not isinstance(
            exc, psycopg.OperationalError
        )

    def close(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.close()
