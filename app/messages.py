"""The read API: one message's status and history, for the business that sent it."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request
from marshmallow import ValidationError

from app.auth import require_api_token
from app.database import reading
from app.errors import ApiError
from schemas.api import MessageListQuerySchema
from schemas.events import MAX_ID_LENGTH
from schemas.fields import digits_only
from workers.core import store

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


LIST_QUERY = MessageListQuerySchema()


def encode_cursor(row: dict[str, Any]) -> str:
    """The keyset of a listed message, opaque to the caller."""
    key = [row["created_at"].isoformat(), row["provider"], row["message_id"]]
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str, str]:
    """The keyset a cursor holds, or a 400 naming ``cursor``."""
    try:
        created, provider, message_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        key = (datetime.fromisoformat(created), str(provider), str(message_id))
    except (ValueError, TypeError):
        raise ApiError(
            400, "invalid query", errors={"cursor": ["not a cursor this API gave"]}
        ) from None
    if key[0].tzinfo is None:
        raise ApiError(400, "invalid query", errors={"cursor": ["not a cursor this API gave"]})
    return key


def load_list_query(args: Any) -> dict[str, Any]:
    """The filters of a listing, validated, phone as its digits (as messages store it);
    raises ValidationError naming the field."""
    query: dict[str, Any] = LIST_QUERY.load(args)
    if "phone" in query:
        query["phone"] = digits_only(query["phone"]) or query["phone"]
    return query


def list_query(args: Any) -> dict[str, Any]:
    """The filters of a listing, or a 400 naming the field."""
    try:
        return load_list_query(args)
    except ValidationError as err:
        raise ApiError(400, "invalid query", errors=err.messages) from None


@bp.get("/messages")
def index() -> Response:
    """Messages matching the filters, oldest first, a page at a time (keyset pagination)."""
    require_api_token()
    query = list_query(request.args)
    after = decode_cursor(query["cursor"]) if "cursor" in query else None
    with reading() as conn:
        rows = store.list_messages(conn, query, after, query["limit"])
    following = encode_cursor(rows[-1]) if len(rows) == query["limit"] else None
    return jsonify(messages=to_json(rows), next=following)


@bp.get("/messages/<provider>/<path:message_id>")
def show(provider: str, message_id: str) -> Response:
    """Return a message's current status and its events, oldest first."""
    require_api_token()
    if not storable_id(message_id):
        raise ApiError(404, "message not found")
    with reading() as conn:
        message = store.fetch_message(conn, provider, message_id)
    if message is None:
        raise ApiError(404, "message not found")
    return jsonify(to_json(message))
