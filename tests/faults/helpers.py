"""Callbacks and counts shared by the fault tests."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from typing import Any

import psycopg

from tests.conftest import ROOT, WEBHOOK_TOKENS

ZAPI_URL = f"/webhooks/zapi/{WEBHOOK_TOKENS['zapi'][0]}"
PROGRESS = ["SENT", "RECEIVED", "READ", "PLAYED"]


def zapi(status: str, message_id: str, offset_ms: int = 0) -> dict[str, Any]:
    return {
        "status": status,
        "ids": [message_id],
        "momment": 1732280000000 + offset_ms,
        "phone": "5511987654321",
        "type": "MessageStatusCallback",
        "instanceId": "fault",
    }


def lifecycle_callbacks(prefix: str, messages: int, seed: int = 0) -> list[dict[str, Any]]:
    """Five callbacks per message (four statuses and one repeat), shuffled together."""
    rng = random.Random(seed)
    bodies = []
    for n in range(messages):
        mid = f"{prefix}-{n}"
        chosen = [*PROGRESS, rng.choice(PROGRESS)]
        bodies += [zapi(s, mid, PROGRESS.index(s)) for s in chosen]
    rng.shuffle(bodies)
    return bodies


def count(conn: psycopg.Connection, sql: str, *params: Any) -> int:
    row = conn.execute(sql, params or None).fetchone()
    return int(row[0]) if row else 0


def events_landed(conn: psycopg.Connection) -> int:
    return count(conn, "SELECT count(*) FROM status_events")


def assert_exactly_once(conn: psycopg.Connection, prefix: str, messages: int) -> None:
    """Every message played, with one history row per distinct status, none doubled."""
    assert (
        count(conn, "SELECT count(*) FROM messages WHERE message_id LIKE %s", f"{prefix}-%")
        == messages
    )
    assert (
        count(
            conn,
            "SELECT count(*) FROM messages WHERE message_id LIKE %s AND status = 'played'",
            f"{prefix}-%",
        )
        == messages
    )
    assert (
        count(conn, "SELECT count(*) FROM status_events WHERE message_id LIKE %s", f"{prefix}-%")
        == 4 * messages
    )
    assert count(
        conn,
        "SELECT count(*) FROM (SELECT DISTINCT provider, message_id, status FROM status_events) d",
    ) == events_landed(conn)


def post_all(client: Any, bodies: list[dict[str, Any]]) -> None:
    """Post each callback through the endpoint; each must be answered 200."""
    for body in bodies:
        response = client.post(ZAPI_URL, json=body)
        assert response.status_code == 200, response.json


def deadletters_command(database_url: str, broker_url: str, *args: str) -> str:
    """Run `python -m workers.deadletters ARGS` on this database and broker; its output."""
    env = {**os.environ, "DATABASE_URL": database_url, "BROKER_URL": broker_url}
    return subprocess.run(
        [sys.executable, "-m", "workers.deadletters", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
