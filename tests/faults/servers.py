"""Servers a fault test owns, so it can stop, kill and restart them."""

from __future__ import annotations

from pathlib import Path

from embedded import EmbeddedPostgres
from workers.core.migrate import migrate


def migrated_postgres(data: Path) -> tuple[EmbeddedPostgres, str]:
    """Start an embedded PostgreSQL with a migrated `ticks` database; return it and its URL."""
    server = EmbeddedPostgres(data)
    url = server.database("ticks")
    migrate(url)
    return server, url
