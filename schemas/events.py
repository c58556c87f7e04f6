"""The canonical status event: what every provider schema produces and the queue carries."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, Protocol

from marshmallow import Schema, fields, post_load, validate

from schemas.fields import CHAT_KINDS, Chat
from schemas.statuses import EVENT_STATUSES

MAX_ID_LENGTH = 256


@dataclasses.dataclass(frozen=True)
class StatusEvent:
    """One status report about one message, normalised across providers."""

    provider: str
    message_id: str
    status: str
    raw_status: str
    occurred_at: datetime
    received_at: datetime
    phone: str | None = None
    chat_id: str | None = None
    chat_kind: str | None = None
    is_group: bool | None = None
    # Who in a group chat this receipt is from (None in one-to-one chats).
    participant: str | None = None
    instance_id: str | None = None
    failure_reason: str | None = None
    request_id: str | None = None


class StatusEventSchema(Schema):
    """Serialise a StatusEvent to JSON-safe data for the queue, and load it back."""

    provider = fields.String(required=True)
    message_id = fields.String(required=True, validate=validate.Length(1, MAX_ID_LENGTH))
    status = fields.String(required=True, validate=validate.OneOf(EVENT_STATUSES))
    raw_status = fields.String(required=True)
    occurred_at = fields.AwareDateTime(required=True, format="iso")
    received_at = fields.AwareDateTime(required=True, format="iso")
    phone = fields.String(load_default=None, allow_none=True)
    chat_id = fields.String(load_default=None, allow_none=True)
    chat_kind = fields.String(
        load_default=None, allow_none=True, validate=validate.OneOf(CHAT_KINDS)
    )
    is_group = fields.Boolean(load_default=None, allow_none=True)
    participant = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(1, MAX_ID_LENGTH)
    )
    instance_id = fields.String(load_default=None, allow_none=True)
    failure_reason = fields.String(load_default=None, allow_none=True)
    request_id = fields.String(load_default=None, allow_none=True)

    @post_load
    def make_event(self, data: dict[str, Any], **kwargs: Any) -> StatusEvent:
        return StatusEvent(**data)


EVENT_SCHEMA = StatusEventSchema()


def chat_fields(chat: Chat, is_group: bool | None = None) -> dict[str, Any]:
    """Return a chat's identity as StatusEvent keyword arguments (``is_group`` as the
    provider said, when the id's own form does not tell)."""
    return {
        "chat_id": chat.chat_id,
        "chat_kind": chat.chat_kind,
        "phone": chat.phone,
        "is_group": is_group if chat.chat_kind is None else chat.chat_kind == "group",
    }


def dump_events(events: list[StatusEvent]) -> list[dict[str, Any]]:
    """Turn events into the JSON-safe dicts a task message carries."""
    return [EVENT_SCHEMA.dump(event) for event in events]


def load_events(payload: list[dict[str, Any]]) -> list[StatusEvent]:
    """Turn a task message's dicts back into validated events."""
    return [EVENT_SCHEMA.load(item) for item in payload]


# What a provider reports of a sending number's (an instance's) connection, in one vocabulary:
# connected (sending), connecting (starting, reconnecting), disconnected (logged out, the phone
# away, a session stopped or failed: nothing is sent until someone acts), restricted (a
# temporary block or a quality flag: sending limited), banned (the number or account blocked).
CONNECTION_STATES = ("connected", "connecting", "disconnected", "restricted", "banned")


@dataclasses.dataclass(frozen=True)
class ConnectionEvent:
    """One report of an instance's connection or health, normalised across providers."""

    provider: str
    instance_id: str
    state: str
    raw_state: str  # the provider's own words: "stateInstance=blocked", "close 403"
    occurred_at: datetime
    received_at: datetime
    reason: str | None = None
    request_id: str | None = None


class ConnectionEventSchema(Schema):
    """Serialise a ConnectionEvent for the queue, and load it back."""

    provider = fields.String(required=True)
    instance_id = fields.String(required=True, validate=validate.Length(1, MAX_ID_LENGTH))
    state = fields.String(required=True, validate=validate.OneOf(CONNECTION_STATES))
    raw_state = fields.String(required=True, validate=validate.Length(1, MAX_ID_LENGTH))
    occurred_at = fields.AwareDateTime(required=True, format="iso")
    received_at = fields.AwareDateTime(required=True, format="iso")
    reason = fields.String(load_default=None, allow_none=True)
    request_id = fields.String(load_default=None, allow_none=True)

    @post_load
    def make_event(self, data: dict[str, Any], **kwargs: Any) -> ConnectionEvent:
        return ConnectionEvent(**data)


CONNECTION_SCHEMA = ConnectionEventSchema()


def dump_connections(events: list[ConnectionEvent]) -> list[dict[str, Any]]:
    """Turn connection events into the JSON-safe dicts a task message carries."""
    return [CONNECTION_SCHEMA.dump(event) for event in events]


def load_connections(payload: list[dict[str, Any]]) -> list[ConnectionEvent]:
    """Turn a task message's dicts back into validated connection events."""
    return [CONNECTION_SCHEMA.load(item) for item in payload]


@dataclasses.dataclass(frozen=True)
class Parsed:
    """What a callback body holds: status events, connection events, or another webhook type
    to ignore.

    ``errors``, when set, names the parts of a body that batches many statuses (Meta's) that
    did not validate: ``events`` are the valid rest, and the body is quarantined as well."""

    events: list[StatusEvent]
    ignored: str | None = None
    errors: dict[str, Any] | None = None
    connections: list[ConnectionEvent] = dataclasses.field(default_factory=list)


class Provider(Protocol):
    """A provider dialect: one function from a JSON body to canonical events."""

    def __call__(self, body: Any, *, received_at: datetime, request_id: str) -> Parsed: ...
