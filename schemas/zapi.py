"""Z-API's ``on-whatsapp-message-status-changes`` webhook (MessageStatusCallback)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from marshmallow import EXCLUDE, Schema, fields, validate

from schemas import Parsed
from schemas.events import MAX_ID_LENGTH, StatusEvent
from schemas.fields import EpochTimestamp, Identifier, digits_only
from workers.statuses import PLAYED, READ, READ_BY_ME, RECEIVED, SENT

CALLBACK_TYPE = "MessageStatusCallback"
# One callback may report many messages; a bound keeps one body from becoming a flood.
MAX_IDS = 1000
# READ_BY_ME (2025) and READ-SELF (older, and Plug) are the connected account's own read
# receipt, never the recipient's: they must not move an outbound message to read.
STATUS_MAP = {
    "SENT": SENT,
    "RECEIVED": RECEIVED,
    "MESSAGE_RECEIVED": RECEIVED,
    "READ": READ,
    "PLAYED": PLAYED,
    "READ_BY_ME": READ_BY_ME,
    "READ-SELF": READ_BY_ME,
}


class MessageStatusSchema(Schema):
    """A Z-API style status callback; unknown fields are ignored."""

    class Meta:
        unknown = EXCLUDE

    type = fields.String(load_default=None)
    instanceId = Identifier(load_default=None, allow_none=True)
    status = fields.String(required=True, validate=validate.OneOf(list(STATUS_MAP)))
    ids = fields.List(
        Identifier(validate=validate.Length(max=MAX_ID_LENGTH)),
        required=True,
        validate=validate.Length(min=1, max=MAX_IDS),
    )
    momment = EpochTimestamp(per_second=1000, required=True)
    phone = Identifier(load_default=None, allow_none=True)
    isGroup = fields.Boolean(load_default=None, allow_none=True)


SCHEMA = MessageStatusSchema()


def other_type(body: Any) -> str | None:
    """Return the webhook type when the body is some other Z-API callback, to be ignored."""
    kind = body.get("type") if isinstance(body, dict) else None
    return kind if isinstance(kind, str) and kind != CALLBACK_TYPE else None


def to_events(provider: str, body: Any, *, received_at: datetime, request_id: str) -> Parsed:
    """Validate a Z-API style body and make one event per message id."""
    ignored = other_type(body)
    if ignored:
        return Parsed(events=[], ignored=ignored)
    data = SCHEMA.load(body)
    chat = data["phone"]
    return Parsed(
        events=[
            StatusEvent(
                provider=provider,
                message_id=message_id,
                status=STATUS_MAP[data["status"]],
                raw_status=data["status"],
                occurred_at=data["momment"],
                received_at=received_at,
                phone=None if data["isGroup"] else digits_only(chat),
                chat_id=chat,
                is_group=data["isGroup"],
                instance_id=data["instanceId"],
                request_id=request_id,
            )
            for message_id in dict.fromkeys(data["ids"])
        ]
    )


def parse(body: Any, *, received_at: datetime, request_id: str) -> Parsed:
    """Turn a Z-API status callback into events."""
    return to_events("zapi", body, received_at=received_at, request_id=request_id)
