"""The read API: one message's status and history, for the business that sent it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
from flask import Blueprint, Response, jsonify
from psycopg_pool import PoolTimeout

from app.auth import require_api_token
from app.database import pool
from app.errors import ApiError
from schemas.events import MAX_ID_LENGTH
from workers import store

bp = Blueprint("messages", __name__)


def to_json(value: Any) -> Any:
    """Render datetimes as ISO 8601 in UTC with an offset, in lists and dicts too."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_json(item) for item in value]
    return value


def storable_id(message_id: str) -> bool:
    """Return whether an id could have been stored (PostgreSQL text holds no NUL)."""
    return len(message_id) <= MAX_ID_LENGTH and "\x00" not in message_id


@bp.get("/messages/<provider>/<path:message_id>")
def show(provider: str, message_id: str) -> Response:
    """Return a message's current status and its events, oldest first."""
    require_api_token()
    if not storable_id(message_id):
        raise ApiError(404, "message not found")
    try:
        with pool().connection(timeout=5) as conn:
            message = store.fetch_message(conn, provider, message_id)
    except (psycopg.OperationalError, PoolTimeout):
        raise ApiError(503, "database unavailable", {"Retry-After": "5"}) from None
    if message is None:
        raise ApiError(404, "message not found")
    return jsonify(to_json(message))
