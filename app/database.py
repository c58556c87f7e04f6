"""The web's PostgreSQL: this process's pool, on the app's DATABASE_URL."""

from __future__ import annotations

from flask import current_app
from psycopg_pool import ConnectionPool

from workers.db import get_pool


def pool() -> ConnectionPool:
    """Return this process's pool for the app's database (never the environment's)."""
    return get_pool(current_app.config["DATABASE_URL"])
