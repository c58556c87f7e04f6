"""The web's PostgreSQL: this process's pool, on the app's DATABASE_URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from flask import current_app
from psycopg_pool import ConnectionPool, PoolTimeout

from app.errors import ApiError
from workers.core.db import get_pool


def pool() -> ConnectionPool:
    """Return this process's pool for the app's database (never the environment's)."""
    return get_pool(current_app.config["DATABASE_URL"])


@contextmanager
def reading() -> Iterator[psycopg.Connection]:
    """A connection for a read API request; an unavailable database is a 503 to retry."""
    try:
        with pool().connection(timeout=5) as conn:
            yield conn
    except (psycopg.OperationalError, PoolTimeout):
        raise ApiError(503, "database unavailable", {"Retry-After": "5"}) from None


@contextmanager
def database() -> Iterator[psycopg.Connection]:
    """A connection of its own, for a command (not the web's pool)."""
    with psycopg.connect(current_app.config["DATABASE_URL"]) as conn:
        yield conn
