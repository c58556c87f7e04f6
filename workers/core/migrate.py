"""Apply the numbered SQL files in migrations/ in order, each once."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import psycopg

from workers.core.db import database_url

log = logging.getLogger(__name__)

# The `migrations` package: beside workers/ in a checkout, in site-packages once installed.
MIGRATIONS_DIR = Path(importlib.util.find_spec("migrations").origin or "").parent  # type: ignore[union-attr]
# Any constant shared by every migrator: concurrent releases wait for each other.
ADVISORY_LOCK_ID = 7_406_301

CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text        PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def pending(conn: psycopg.Connection) -> list[Path]:
    """Return the migration files not yet applied, in order."""
    files = sorted(MIGRATIONS_DIR.glob("*.sql"))
    if not files:  # a broken install: saying "none pending" would leave the schema missing
        raise RuntimeError(f"no migration files in {MIGRATIONS_DIR}")
    applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    return [path for path in files if path.stem not in applied]


def migrate(conninfo: str) -> list[str]:
    """Apply every pending migration in one transaction; return their names."""
    with psycopg.connect(conninfo) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_ID,))
        conn.execute(CREATE_LEDGER)
        done = []
        for path in pending(conn):
            conn.execute(path.read_text())
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.stem,))
            done.append(path.stem)
    return done


def main(conninfo: str | None = None) -> int:
    """Migrate ``conninfo``'s database, else DATABASE_URL's; exit 1 with one line if unreachable.

    A database that is missing or down is the operator's to fix, not a bug: it is said in a
    line (psycopg's own words: host, port, database), not in a traceback.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        done = migrate(conninfo or database_url())
    except psycopg.OperationalError as exc:
        log.error("cannot migrate: %s", " ".join(str(exc).split()))
        return 1
    log.info("applied %d migration(s): %s", len(done), ", ".join(done) or "none pending")
    return 0


if __name__ == "__main__":
    sys.exit(main())
