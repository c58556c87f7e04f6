"""WAHA (waha.devlike.pro, github.com/devlikeapro/waha): ``message.ack`` and, since 2025.12.2,
``message.ack.group`` (a group participant's receipt).

Read in its docs (events, openapi 2026.7.1) and source (``WAMessageAck`` in
src/structures/enums.dto.ts):
- The envelope is ``{id, timestamp (ms, when the event was made), event, session, metadata,
  me, payload, environment, engine}``; older versions send no ``id`` or ``timestamp``.
- ``payload``: ``id`` (``<fromMe>_<chat>_<message id>``, in groups with ``_<participant>``
  after it), ``from``, ``to``, ``participant``, ``fromMe``, ``ack`` (-1 ERROR, 0 PENDING,
  1 SERVER, 2 DEVICE, 3 READ, 4 PLAYED) and ``ackName`` (the same as a word, or UNKNOWN).
- A message is stored under its id without the participant part, so a group message's
  receipts from every participant land on the one message, under the id WAHA gave on send.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from schemas.events import MAX_ID_LENGTH, ConnectionEvent, Parsed, StatusEvent, chat_fields
from schemas.fields import EpochTimestamp, Identifier, chat_identity
from schemas.statuses import FAILED, PENDING, PLAYED, READ, READ_BY_ME, RECEIVED, SENT

EVENTS = frozenset({"message.ack", "message.ack.group"})
# A session's status (event session.status), in Ticks' connection vocabulary.
SESSION_EVENT = "session.status"
SESSION_STATES = {
    "WORKING": "connected",
    "STARTING": "connecting",
    "SCAN_QR_CODE": "disconnected",  # logged out: waiting for its QR code to be scanned
    "STOPPED": "disconnected",
    "FAILED": "disconnected",
    "PASSKEY_REQUIRED": "disconnected",  # GOWS: waiting for a passkey (WAHA 2026)
    "PASSKEY_CONFIRMATION_REQUIRED": "disconnected",
}
ACKS = {-1: "ERROR", 0: "PENDING", 1: "SERVER", 2: "DEVICE", 3: "READ", 4: "PLAYED"}
STATUS_MAP = {
    "ERROR": FAILED,
    "PENDING": PENDING,
    "SERVER": SENT,
    "DEVICE": RECEIVED,
    "READ": READ,
    "PLAYED": PLAYED,
}


class WahaAckSchema(Schema):
    """``payload`` of a message.ack; unknown fields (``_data``...) are ignored."""

    class Meta:
        unknown = EXCLUDE

    id = Identifier(required=True, validate=validate.Length(max=MAX_ID_LENGTH * 2))
    to = Identifier(load_default=None, allow_none=True)
    participant = Identifier(
        load_default=None, allow_none=True, validate=validate.Length(max=MAX_ID_LENGTH)
    )
    fromMe = fields.Boolean(load_default=True, allow_none=True)
    ack = fields.Integer(
        load_default=None, allow_none=True, strict=True, validate=validate.OneOf(list(ACKS))
    )
    ackName = fields.String(
        load_default=None, allow_none=True, validate=validate.OneOf(list(STATUS_MAP))
    )


class WahaWebhookSchema(Schema):
    """A WAHA webhook; unknown fields are ignored."""

    class Meta:
        unknown = EXCLUDE

    event = fields.String(required=True)
    session = Identifier(load_default=None, allow_none=True)
    timestamp = EpochTimestamp(per_second=1000, load_default=None, allow_none=True)
    payload = fields.Nested(WahaAckSchema, required=True)


SCHEMA = WahaWebhookSchema()


def split_id(serialized: str) -> tuple[str, str | None]:
    """Return (message id without the participant part, the chat) of a serialized id:
    ``true_<chat>_<id>``, in a group or broadcast ``true_<chat>_<id>_<participant>``."""
    parts = serialized.split("_")
    if len(parts) < 3 or parts[0] not in ("true", "false"):
        return serialized, None
    chat = parts[1]
    if len(parts) > 3 and chat.endswith(("@g.us", "@broadcast")):
        return "_".join(parts[:3]), chat
    return serialized, chat


class SessionStatusSchema(Schema):
    """session.status's payload; unknown fields are ignored."""

    class Meta:
        unknown = EXCLUDE

    status = fields.String(required=True, validate=validate.OneOf(SESSION_STATES))


class SessionEventSchema(Schema):
    """A session.status event; unknown fields (me, engine, environment...) are ignored."""

    class Meta:
        unknown = EXCLUDE

    session = Identifier(required=True)
    timestamp = EpochTimestamp(per_second=1000, load_default=None, allow_none=True)
    payload = fields.Nested(SessionStatusSchema, required=True)


SESSION_SCHEMA = SessionEventSchema()


def session_event(body: Any, received_at: datetime, request_id: str) -> ConnectionEvent:
    """The session's new status, as a connection event of its instance (the session)."""
    data = SESSION_SCHEMA.load(body)
    status = data["payload"]["status"]
    return ConnectionEvent(
        provider="waha",
        instance_id=data["session"],
        state=SESSION_STATES[status],
        raw_state=status,
        occurred_at=data["timestamp"] or received_at,
        received_at=received_at,
        request_id=request_id,
    )


def parse(body: Any, *, received_at: datetime, request_id: str) -> Parsed:
    """Turn a message.ack into one event, a session.status into a connection event; every
    other event is ignored."""
    kind = body.get("event") if isinstance(body, dict) else None
    if kind == SESSION_EVENT:
        return Parsed(events=[], connections=[session_event(body, received_at, request_id)])
    if isinstance(kind, str) and kind not in EVENTS:
        return Parsed(events=[], ignored=kind)
    data = SCHEMA.load(body)
    ack = data["payload"]
    name = ACKS[ack["ack"]] if ack["ack"] is not None else ack["ackName"]
    if name is None:
        raise ValidationError({"payload": {"ack": ["Missing data for required field."]}})
    message_id, chat_id = split_id(ack["id"])
    if len(message_id) > MAX_ID_LENGTH:
        raise ValidationError({"payload": {"id": [f"Longer than {MAX_ID_LENGTH}."]}})
    status = STATUS_MAP[name]
    if ack["fromMe"] is False:
        # A message the connected account received: only its own reading of it is news.
        if status not in (READ, PLAYED):
            return Parsed(events=[], ignored=f"{kind} of a received message")
        status = READ_BY_ME
    chat = chat_identity(chat_id or ack["to"])
    in_group = chat.chat_kind == "group" or kind == "message.ack.group"
    return Parsed(
        events=[
            StatusEvent(
                provider="waha",
                message_id=message_id,
                status=status,
                raw_status=name,
                occurred_at=data["timestamp"] or received_at,
                received_at=received_at,
                instance_id=data["session"],
                participant=ack["participant"] if in_group else None,
                failure_reason="ERROR" if status == FAILED else None,
                request_id=request_id,
                **chat_fields(chat, in_group or None),
            )
        ]
    )
