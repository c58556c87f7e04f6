"""The Postgres connection pool of this process, opened lazily and again after a fork."""

from __future__ import annotations

import os

from psycopg_pool import ConnectionPool

DEFAULT_DATABASE_URL = "postgresql://127.0.0.1:5432/ticks"
POOL_MAX_SIZE = int(os.environ.get("DATABASE_POOL_SIZE", "4"))

_pool: ConnectionPool | None = None
_pool_pid: int | None = None


def database_url() -> str:
    """Return the database URL from the environment."""
    return os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)


def get_pool(conninfo: str | None = None) -> ConnectionPool:
    """Return this process's pool, creating it on first use and after a fork.

    A pool inherited through fork shares sockets with the parent, so a child builds its
    own (Celery's prefork children and gunicorn's workers both fork). Asked for another
    database than its pool's, a process closes that pool and opens one on the database asked.
    """
    global _pool, _pool_pid
    wanted = conninfo or database_url()
    if _pool is not None and _pool_pid == os.getpid() and _pool.conninfo != wanted:
        # Another database than the pool's (tests build apps on several): not the old one's.
        _pool.close()
        _pool = None
    if _pool is None or _pool_pid != os.getpid():
        _pool = ConnectionPool(
            wanted,
            min_size=1,
            max_size=POOL_MAX_SIZE,
            kwargs={"connect_timeout": 5},
            # A task waiting longer for a connection would rather retry with backoff.
            timeout=5,
            # After a database restart the pooled sockets are dead; check before lending.
            check=ConnectionPool.check_connection,
            name="ticks",
            open=True,
        )
        _pool_pid = os.getpid()
    return _pool


def close_pool() -> None:
    """Close this process's pool, if it opened one."""
    global _pool, _pool_pid
    if _pool is not None and _pool_pid == os.getpid():
        _pool.close()
    _pool = None
    _pool_pid = None
