"""The connection pool every part of the PostgreSQL store shares, and its error wording."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runtime.errors import RecordStoreError
from runtime.pgstore.schema import mask, psycopg_module


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

    def close(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.close()
