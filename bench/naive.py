"""Reference: the pipeline a competent user writes first.

An endpoint that parses each callback and sends it as its own Celery task (``web``, run under
the same server as Ticks'), one Celery task per callback with Celery's default settings, and one
transaction per event: an upsert that keeps the furthest status, and a history row per new
event. It is correct (idempotent, monotonic); it is just not built for throughput.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import psycopg
from celery import Celery
from flask import Flask, jsonify, request

NAIVE_TASK = "bench.naive_apply"
RANK = {"SENT": 1, "RECEIVED": 2, "READ": 3, "PLAYED": 4}
SCHEMA = """
CREATE TABLE IF NOT EXISTS naive_messages (
    message_id text PRIMARY KEY, status text NOT NULL, rank int NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS naive_events (
    message_id text NOT NULL, status text NOT NULL, occurred_at bigint NOT NULL,
    received_at timestamptz, created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, status));
"""
INSERT_EVENT = """
INSERT INTO naive_events (message_id, status, occurred_at, received_at) VALUES (%s, %s, %s, %s)
ON CONFLICT DO NOTHING
"""
UPSERT_MESSAGE = """
INSERT INTO naive_messages (message_id, status, rank) VALUES (%s, %s, %s)
ON CONFLICT (message_id) DO UPDATE SET status = EXCLUDED.status, rank = EXCLUDED.rank,
    updated_at = now()
WHERE naive_messages.rank < EXCLUDED.rank
"""

app = Celery("naive", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
_conn: psycopg.Connection | None = None


def connection() -> psycopg.Connection:
    """Return this process's connection, opened on first use."""
    global _conn
    if _conn is None or _conn.closed:
        _conn = psycopg.connect(os.environ["DATABASE_URL"])
    return _conn


@app.task(name=NAIVE_TASK)
def naive_apply(body: dict, received_at: str | None = None) -> None:
    """Apply one Z-API callback: one transaction per message id."""
    conn = connection()
    for message_id in body["ids"]:
        with conn.transaction():
            conn.execute(INSERT_EVENT, (message_id, body["status"], body["momment"], received_at))
            conn.execute(UPSERT_MESSAGE, (message_id, body["status"], RANK[body["status"]]))


web = Flask(__name__)


@web.post("/webhooks/<provider>/<token>")
def receive(provider: str, token: str):
    """Send the callback as a task of its own, then answer."""
    received_at = datetime.now(UTC).isoformat()
    body = request.get_json()
    app.send_task(NAIVE_TASK, args=[body, received_at])
    return jsonify(accepted=len(body.get("ids", [])))


@web.get("/healthz")
def healthz():
    return jsonify(status="ok")
