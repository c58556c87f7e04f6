"""Z-API's status webhook (``MessageStatusCallback``) and its "on send" webhook
(``DeliveryCallback``), the only place Z-API reports a send that failed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from marshmallow import EXCLUDE, Schema, fields, validate

from schemas.events import MAX_ID_LENGTH, ConnectionEvent, Parsed, StatusEvent, chat_fields
from schemas.fields import EpochSecondsOrMillis, EpochTimestamp, Identifier, Text, chat_identity
from schemas.statuses import FAILED, PLAYED, READ, READ_BY_ME, RECEIVED, SENT

CALLBACK_TYPE = "MessageStatusCallback"
DELIVERY_TYPE = "DeliveryCallback"
# The instance's own webhooks "on disconnect" and "on connect" (update-webhook-disconnected,
# update-webhook-connected; update-every-webhooks points them here too).
CONNECTION_TYPES = {"DisconnectedCallback": "disconnected", "ConnectedCallback": "connected"}
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
    # Group receipts: one callback per participant, the same ids and status each time.
    participant = Identifier(
        load_default=None, allow_none=True, validate=validate.Length(max=MAX_ID_LENGTH)
    )
    participantPhone = Identifier(
        load_default=None, allow_none=True, validate=validate.Length(max=MAX_ID_LENGTH)
    )


class DeliveryCallbackSchema(Schema):
    """Z-API's "on send" webhook: a send, and its error when it failed; unknown fields ignored.

    Documented (developer.z-api.io/webhooks/on-message-send-examples): ``phone``,
    ``messageId``, ``zaapId``, ``instanceId``, ``momment`` (ms), ``type``, and only on a failed
    send ``error`` (text) and, for some errors, ``errorCode`` (``SHADOW_BAN``). Older examples
    have no ``momment``: the receipt time stands in.
    """

    class Meta:
        unknown = EXCLUDE

    type = fields.String(required=True)
    instanceId = Identifier(load_default=None, allow_none=True)
    messageId = Identifier(required=True, validate=validate.Length(max=MAX_ID_LENGTH))
    zaapId = Identifier(load_default=None, allow_none=True)
    momment = EpochTimestamp(per_second=1000, load_default=None, allow_none=True)
    phone = Identifier(load_default=None, allow_none=True)
    error = Text(load_default=None, allow_none=True)
    errorCode = Text(load_default=None, allow_none=True)


SCHEMA = MessageStatusSchema()
DELIVERY_SCHEMA = DeliveryCallbackSchema()


class ConnectionCallbackSchema(Schema):
    """Z-API's DisconnectedCallback / ConnectedCallback; unknown fields are ignored."""

    class Meta:
        unknown = EXCLUDE

    type = fields.String(required=True, validate=validate.OneOf(CONNECTION_TYPES))
    instanceId = Identifier(required=True)
    momment = EpochSecondsOrMillis(required=True)
    error = Text(load_default=None, allow_none=True)


CONNECTION_SCHEMA = ConnectionCallbackSchema()


def connection_event(
    provider: str, body: Any, received_at: datetime, request_id: str
) -> ConnectionEvent:
    """The instance connected, or lost its connection (``error`` says why, when it does)."""
    data = CONNECTION_SCHEMA.load(body)
    return ConnectionEvent(
        provider=provider,
        instance_id=data["instanceId"],
        state=CONNECTION_TYPES[data["type"]],
        raw_state=data["type"],
        occurred_at=data["momment"],
        received_at=received_at,
        reason=data["error"],
        request_id=request_id,
    )


def other_type(body: Any) -> str | None:
    """Return the webhook type when the body is some other Z-API callback, to be ignored."""
    kind = body.get("type") if isinstance(body, dict) else None
    return kind if isinstance(kind, str) and kind not in (CALLBACK_TYPE, DELIVERY_TYPE) else None


def to_events(provider: str, body: Any, *, received_at: datetime, request_id: str) -> Parsed:
    """Validate a Z-API style body and make one event per message id."""
    if isinstance(body, dict) and body.get("type") in CONNECTION_TYPES:
        return Parsed(
            events=[], connections=[connection_event(provider, body, received_at, request_id)]
        )
    ignored = other_type(body)
    if ignored:
        return Parsed(events=[], ignored=ignored)
    if isinstance(body, dict) and body.get("type") == DELIVERY_TYPE:
        return Parsed(events=[delivery_event(provider, body, received_at, request_id)])
    data = SCHEMA.load(body)
    chat = chat_fields(chat_identity(data["phone"], is_group=data["isGroup"]), data["isGroup"])
    participant = data["participantPhone"] or data["participant"]
    return Parsed(
        events=[
            StatusEvent(
                provider=provider,
                message_id=message_id,
                status=STATUS_MAP[data["status"]],
                raw_status=data["status"],
                occurred_at=data["momment"],
                received_at=received_at,
                instance_id=data["instanceId"],
                participant=participant if chat["is_group"] else None,
                request_id=request_id,
                **chat,
            )
            for message_id in dict.fromkeys(data["ids"])
        ]
    )


def delivery_event(provider: str, body: Any, received_at: datetime, request_id: str) -> StatusEvent:
    """A DeliveryCallback: ``sent`` when the send worked, ``failed`` with its error if not."""
    data = DELIVERY_SCHEMA.load(body)
    error, code = data["error"], data["errorCode"]
    failed = bool(error or code)
    reason = ": ".join(part for part in (code, error) if part) if failed else None
    return StatusEvent(
        provider=provider,
        message_id=data["messageId"],
        status=FAILED if failed else SENT,
        raw_status=f"{DELIVERY_TYPE}:{'error' if failed else 'ok'}",
        occurred_at=data["momment"] or received_at,
        received_at=received_at,
        instance_id=data["instanceId"],
        failure_reason=reason,
        request_id=request_id,
        **chat_fields(chat_identity(data["phone"])),
    )


def parse(body: Any, *, received_at: datetime, request_id: str) -> Parsed:
    """Turn a Z-API status callback into events."""
    return to_events("zapi", body, received_at=received_at, request_id=request_id)
