"""Green-API's ``outgoingMessageStatus`` webhook."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from marshmallow import EXCLUDE, Schema, fields, validate

from schemas.events import MAX_ID_LENGTH, Parsed, StatusEvent, chat_fields
from schemas.fields import EpochTimestamp, Identifier, Text, chat_identity
from schemas.statuses import FAILED, READ, RECEIVED, SENT

WEBHOOK_TYPE = "outgoingMessageStatus"
# Every failure flavour is one terminal state; the raw value survives in failure_reason.
STATUS_MAP = {
    "sent": SENT,
    "delivered": RECEIVED,
    "read": READ,
    "failed": FAILED,
    "noAccount": FAILED,
    "notInGroup": FAILED,
    "yellowCard": FAILED,
    "noActiveSession": FAILED,
}


class InstanceDataSchema(Schema):
    """The account the notification is about."""

    class Meta:
        unknown = EXCLUDE

    idInstance = Identifier(load_default=None, allow_none=True)
    wid = fields.String(load_default=None, allow_none=True)
    typeInstance = fields.String(load_default=None, allow_none=True)


class OutgoingMessageStatusSchema(Schema):
    """A Green-API outgoing message status notification; unknown fields are ignored."""

    class Meta:
        unknown = EXCLUDE

    typeWebhook = fields.String(required=True)
    chatId = Text(load_default=None, allow_none=True)
    instanceData = fields.Nested(InstanceDataSchema, load_default=None, allow_none=True)
    timestamp = EpochTimestamp(per_second=1, required=True)
    idMessage = Identifier(required=True, validate=validate.Length(max=MAX_ID_LENGTH))
    status = fields.String(required=True, validate=validate.OneOf(list(STATUS_MAP)))
    description = Text(load_default=None, allow_none=True)
    sendByApi = fields.Boolean(load_default=None, allow_none=True)


SCHEMA = OutgoingMessageStatusSchema()


def failure_reason(status: str, description: str | None) -> str | None:
    """Return the raw failure status with the provider's description, for failures only."""
    if STATUS_MAP[status] != FAILED:
        return None
    return f"{status}: {description}" if description else status


def parse(body: Any, *, received_at: datetime, request_id: str) -> Parsed:
    """Turn a Green-API notification into one event, or ignore another webhook type."""
    kind = body.get("typeWebhook") if isinstance(body, dict) else None
    if isinstance(kind, str) and kind != WEBHOOK_TYPE:
        return Parsed(events=[], ignored=kind)
    data = SCHEMA.load(body)
    instance = data["instanceData"] or {}
    event = StatusEvent(
        provider="greenapi",
        message_id=data["idMessage"],
        status=STATUS_MAP[data["status"]],
        raw_status=data["status"],
        occurred_at=data["timestamp"],
        received_at=received_at,
        **chat_fields(chat_identity(data["chatId"])),
        instance_id=instance.get("idInstance"),
        failure_reason=failure_reason(data["status"], data["description"]),
        request_id=request_id,
    )
    return Parsed(events=[event])
