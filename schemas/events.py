"""The canonical status event: what every provider schema produces and the queue carries."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from marshmallow import Schema, fields, post_load, validate

from workers.statuses import EVENT_STATUSES

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
    is_group: bool | None = None
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
    is_group = fields.Boolean(load_default=None, allow_none=True)
    instance_id = fields.String(load_default=None, allow_none=True)
    failure_reason = fields.String(load_default=None, allow_none=True)
    request_id = fields.String(load_default=None, allow_none=True)

    @post_load
    def make_event(self, data: dict[str, Any], **kwargs: Any) -> StatusEvent:
        return StatusEvent(**data)


EVENT_SCHEMA = StatusEventSchema()


def dump_events(events: list[StatusEvent]) -> list[dict[str, Any]]:
    """Turn events into the JSON-safe dicts a task message carries."""
    return [EVENT_SCHEMA.dump(event) for event in events]


def load_events(payload: list[dict[str, Any]]) -> list[StatusEvent]:
    """Turn a task message's dicts back into validated events."""
    return [EVENT_SCHEMA.load(item) for item in payload]
