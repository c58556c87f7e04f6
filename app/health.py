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
    """Return whether the broker answers a PING."""
    try:
        ping_broker()
        return True
    except BROKER_ERRORS as exc:
        log.warning("readiness: broker unavailable: %s", exc)
        return False


@bp.get("/readyz")
def readyz() -> Response:
    """Answer 200 when the broker and the database answer, else 503 naming the failures."""
    checks = {"broker": broker_answers(), "database": database_answers()}
    failed = [name for name, ok in checks.items() if not ok]
    body = {name: "ok" if ok else "unavailable" for name, ok in checks.items()}
    if failed:
        response = jsonify(error=f"{' and '.join(failed)} unavailable", **body)
        response.status_code = 503
        return response
    return jsonify(status="ok", **body)
