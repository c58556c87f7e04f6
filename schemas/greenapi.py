"""Green-API's ``outgoingMessageStatus`` webhook."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from schemas.events import MAX_ID_LENGTH, ConnectionEvent, Parsed, StatusEvent, chat_fields
from schemas.fields import EpochTimestamp, Identifier, Text, chat_identity
from schemas.statuses import FAILED, READ, RECEIVED, SENT

WEBHOOK_TYPE = "outgoingMessageStatus"
# The account's state (settings: stateWebhook = yes), in Ticks' connection vocabulary.
STATE_TYPE = "stateInstanceChanged"
STATES = {
    "authorized": "connected",
    "starting": "connecting",
    "notAuthorized": "disconnected",  # logged out: the QR code must be scanned again
    "sleepMode": "disconnected",  # the phone is off or offline
    "yellowCard": "restricted",  # sending suspended for a while: too many complaints
    "blocked": "banned",
}
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


class StateInstanceChangedSchema(Schema):
    """A stateInstanceChanged notification; unknown fields are ignored."""

    class Meta:
        unknown = EXCLUDE

    instanceData = fields.Nested(InstanceDataSchema, required=True)
    timestamp = EpochTimestamp(per_second=1, required=True)
    stateInstance = fields.String(required=True, validate=validate.OneOf(STATES))


STATE_SCHEMA = StateInstanceChangedSchema()


def state_event(body: Any, received_at: datetime, request_id: str) -> ConnectionEvent:
    """The account's new state, as a connection event of its instance."""
    data = STATE_SCHEMA.load(body)
    instance_id = data["instanceData"]["idInstance"]
    if instance_id is None:
        raise ValidationError(
            {"instanceData": {"idInstance": ["Missing data for required field."]}}
        )
    return ConnectionEvent(
        provider="greenapi",
        instance_id=instance_id,
        state=STATES[data["stateInstance"]],
        raw_state=data["stateInstance"],
        occurred_at=data["timestamp"],
        received_at=received_at,
        request_id=request_id,
    )


def parse(body: Any, *, received_at: datetime, request_id: str) -> Parsed:
    """Turn a Green-API notification into one event, or ignore another webhook type."""
    kind = body.get("typeWebhook") if isinstance(body, dict) else None
    if kind == STATE_TYPE:
        return Parsed(events=[], connections=[state_event(body, received_at, request_id)])
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
