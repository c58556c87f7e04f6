"""Liveness and readiness probes."""

from __future__ import annotations

import logging

import psycopg
from flask import Blueprint, Response, current_app, jsonify

from app.queue import BROKER_ERRORS, ping_broker

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)
DATABASE_TIMEOUT_SECONDS = 2


@bp.get("/healthz")
def healthz() -> Response:
    """Answer 200 while the process runs."""
    return jsonify(status="ok")


def database_answers() -> bool:
    """Return whether the database answers a query within the timeout."""
    try:
        with psycopg.connect(
            current_app.config["DATABASE_URL"], connect_timeout=DATABASE_TIMEOUT_SECONDS
        ) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error as exc:
        log.warning("readiness: database unavailable: %s", exc)
        return False


def broker_answers() -> bool:
    """Return whether the broker takes a write now (up, and not refusing publishes)."""
    try:
        ping_broker()
        return True
    except BROKER_ERRORS as exc:
        log.warning("readiness: broker unavailable: %s", exc)
        return False


@bp.get("/readyz")
def readyz() -> Response:
    """Answer 200 while the broker takes messages, else 503; PostgreSQL's state is reported.

    The endpoint needs only the broker to accept callbacks (the workers write to PostgreSQL
    and wait out its outages, nothing lost): a probe that failed on a database outage would
    take every web instance out of a load balancer's rotation and turn a harmless outage into
    failed webhooks.
    """
    broker, database = broker_answers(), database_answers()
    body = {
        "broker": "ok" if broker else "unavailable",
        "database": "ok" if database else "unavailable",
    }
    if not broker:
        response = jsonify(
            error="broker unavailable or refusing publishes (down, or a memory or disk alarm):"
            " callbacks cannot be accepted",
            **body,
        )
        response.status_code = 503
        return response
    return jsonify(status="ok", **body)
