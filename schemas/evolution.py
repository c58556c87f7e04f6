"""Evolution API (github.com/EvolutionAPI/evolution-api): the ``messages.update`` event.

Read in its source (v1.8.2, v2.2.x, v2.3.0-2.3.6):
- The envelope is ``{event, instance, data, destination, date_time, sender, server_url,
  apikey}``; ``event`` is sent as ``messages.update`` (``MESSAGES_UPDATE`` is the name in its
  configuration, and older docs say ``message.update``): all three are accepted.
- ``data``: ``keyId`` (v2) or ``id`` (v1) is WhatsApp's message id; ``messageId`` (v2, only
  with its database on) is Evolution's own row id, not the message's, so it is not used.
  ``remoteJid`` is the chat, ``fromMe`` whether the connected account sent it,
  ``participant`` the group member (2.2.0-2.3.4 put ``remoteJid`` there: ignored unless the
  chat is a group and it differs), ``status`` a string of ERROR, PENDING, SERVER_ACK,
  DELIVERY_ACK, READ, PLAYED (its numeric scale 0-5 is accepted too); DELETED, or no status,
  is an edit or a deletion, not a delivery status. Its Cloud API channel sends SENT,
  DELIVERED, READ, FAILED.
- No time of the status itself: v1 has ``data.datetime`` (epoch ms, when Evolution sent it);
  v2's ``date_time`` is the server's local time written with a ``Z``, so it is not trusted
  and the receipt time stands in.
- It signs nothing: the token is in the URL, or in a header set in its webhook config.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from schemas.events import MAX_ID_LENGTH, ConnectionEvent, Parsed, StatusEvent, chat_fields
from schemas.fields import EpochTimestamp, Identifier, chat_identity
from schemas.statuses import FAILED, PENDING, PLAYED, READ, READ_BY_ME, RECEIVED, SENT

EVENTS = frozenset({"messages.update", "message.update"})
# connection.update (CONNECTION_UPDATE): the instance's state, and for `close` WhatsApp's
# reason (Baileys' DisconnectReason), in Ticks' connection vocabulary.
CONNECTION_EVENT = "connection.update"
CONNECTION_STATES = {"open": "connected", "connecting": "connecting", "refused": "disconnected"}
CLOSE_REASONS = {
    401: ("disconnected", "logged out"),
    402: ("restricted", "temporarily banned"),  # Evolution's reading of the code
    403: ("banned", "forbidden"),
    406: ("banned", "banned"),  # Evolution's reading of the code
    440: ("disconnected", "replaced by another session"),
}
# Evolution's own scale (src/utils/renderStatus.ts) and its Cloud API channel's words.
NUMERIC = ("ERROR", "PENDING", "SERVER_ACK", "DELIVERY_ACK", "READ", "PLAYED")
STATUS_MAP = {
    "ERROR": FAILED,
    "PENDING": PENDING,
    "SERVER_ACK": SENT,
    "DELIVERY_ACK": RECEIVED,
    "READ": READ,
    "PLAYED": PLAYED,
    "SENT": SENT,
    "DELIVERED": RECEIVED,
    "FAILED": FAILED,
}
NOT_DELIVERY = "DELETED"


def event_name(value: Any) -> str | None:
    """``MESSAGES_UPDATE`` and ``messages.update`` alike, as ``messages.update``."""
    return value.lower().replace("_", ".") if isinstance(value, str) else None


class EvolutionStatus(fields.Field):
    """A status word, or Evolution's numeric scale 0-5, as the word."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(NUMERIC):
            return NUMERIC[value]
        if isinstance(value, str) and value.upper() in STATUS_MAP:
            return value.upper()
        raise ValidationError(f"Must be one of: {', '.join(STATUS_MAP)}, or 0-5.")


class EvolutionUpdateSchema(Schema):
    """``data`` of a messages.update; unknown fields are ignored."""

    class Meta:
        unknown = EXCLUDE

    keyId = Identifier(load_default=None, validate=validate.Length(max=MAX_ID_LENGTH))
    id = Identifier(load_default=None, validate=validate.Length(max=MAX_ID_LENGTH))
    remoteJid = Identifier(load_default=None, allow_none=True)
    fromMe = fields.Boolean(load_default=True, allow_none=True)
    participant = Identifier(
        load_default=None, allow_none=True, validate=validate.Length(max=MAX_ID_LENGTH)
    )
    status = EvolutionStatus(required=True)
    datetime = EpochTimestamp(per_second=1000, load_default=None, allow_none=True)


class EvolutionWebhookSchema(Schema):
    """An Evolution API webhook; unknown fields (destination, apikey, ...) are ignored."""

    class Meta:
        unknown = EXCLUDE

    event = fields.String(required=True)
    instance = Identifier(load_default=None, allow_none=True)
    data = fields.Nested(EvolutionUpdateSchema, required=True)


SCHEMA = EvolutionWebhookSchema()


class ConnectionStateSchema(Schema):
    """connection.update's data; unknown fields (wuid, profileName...) are ignored."""

    class Meta:
        unknown = EXCLUDE

    state = fields.String(required=True, validate=validate.OneOf([*CONNECTION_STATES, "close"]))
    statusReason = fields.Integer(load_default=None, allow_none=True, strict=True)


class ConnectionUpdateSchema(Schema):
    """A connection.update webhook. Its date_time is the server's local time marked Z (off by
    the server's UTC offset, at most 14 hours): kept as when it happened, since it orders that
    server's reports and makes a retry the same report; a time over a day past its receipt
    counts as its receipt (workers/core/store.py)."""

    class Meta:
        unknown = EXCLUDE

    instance = Identifier(required=True)
    data = fields.Nested(ConnectionStateSchema, required=True)
    date_time = fields.AwareDateTime(load_default=None, allow_none=True, format="iso")


CONNECTION_SCHEMA = ConnectionUpdateSchema()


def connection_event(body: Any, received_at: datetime, request_id: str) -> ConnectionEvent:
    """The instance's new state, as a connection event."""
    data = CONNECTION_SCHEMA.load(body)
    state, code = data["data"]["state"], data["data"]["statusReason"]
    if state == "close":
        normalised, reason = CLOSE_REASONS.get(code, ("disconnected", "connection closed"))
    else:
        normalised, reason = CONNECTION_STATES[state], None
    return ConnectionEvent(
        provider="evolution",
        instance_id=data["instance"],
        state=normalised,
        raw_state=f"{state} {code}" if code is not None else state,
        occurred_at=data["date_time"] or received_at,
        received_at=received_at,
        reason=reason,
        request_id=request_id,
    )


def parse(body: Any, *, received_at: datetime, request_id: str) -> Parsed:
    """Turn a messages.update into one event, a connection.update into a connection event;
    every other event is ignored."""
    kind = event_name(body.get("event")) if isinstance(body, dict) else None
    if kind == CONNECTION_EVENT:
        return Parsed(events=[], connections=[connection_event(body, received_at, request_id)])
    if kind is not None and kind not in EVENTS:
        return Parsed(events=[], ignored=body["event"])
    data = body.get("data") if isinstance(body, dict) else None
    raw_status = data.get("status") if isinstance(data, dict) else None
    if isinstance(data, dict) and (raw_status is None or raw_status == NOT_DELIVERY):
        return Parsed(events=[], ignored=f"{body.get('event')} {raw_status or 'without status'}")
    loaded = SCHEMA.load(body)
    update = loaded["data"]
    message_id = update["keyId"] or update["id"]
    if not message_id:
        raise ValidationError({"data": {"keyId": ["Missing data for required field."]}})
    status = STATUS_MAP[update["status"]]
    if update["fromMe"] is False:
        # A message the connected account received: only its own reading of it is news.
        if status not in (READ, PLAYED):
            return Parsed(events=[], ignored=f"{body['event']} of a received message")
        status = READ_BY_ME
    chat = chat_identity(update["remoteJid"])
    participant = update["participant"]
    in_group = chat.chat_kind == "group"
    return Parsed(
        events=[
            StatusEvent(
                provider="evolution",
                message_id=message_id,
                status=status,
                raw_status=update["status"],
                occurred_at=update["datetime"] or received_at,
                received_at=received_at,
                instance_id=loaded["instance"],
                participant=participant if in_group and participant != chat.chat_id else None,
                failure_reason=update["status"] if status == FAILED else None,
                request_id=request_id,
                **chat_fields(chat),
            )
        ]
    )
