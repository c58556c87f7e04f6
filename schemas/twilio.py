"""Twilio's Messaging status callback, for a WhatsApp sender.

Read in Twilio's docs (Message resource, "Track the message status of outbound messages",
webhooks security, connection overrides) and twilio-python's RequestValidator:
- a form-encoded POST (``application/x-www-form-urlencoded``) with ``MessageSid``,
  ``MessageStatus``, ``AccountSid``, ``From``, ``To`` (``whatsapp:+<number>``), ``ErrorCode``
  when it failed, and more that Twilio adds without notice (accepted, and signed);
- no time of the event: the receipt time stands in;
- no callback for a message's first status; ``queued`` (after ``accepted`` or
  ``scheduled``), ``sent``/``failed``, ``delivered``/``undelivered``, ``read``, ``canceled``
  (a scheduled message) may follow, in any order.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from marshmallow import EXCLUDE, Schema, fields, validate

from schemas.events import MAX_ID_LENGTH, Parsed, StatusEvent, chat_fields
from schemas.fields import Identifier, Text, chat_identity
from schemas.statuses import FAILED, PENDING, READ, RECEIVED, SENT

STATUS_MAP = {
    "queued": PENDING,
    "sending": PENDING,
    "accepted": PENDING,
    "scheduled": PENDING,
    "sent": SENT,
    "delivered": RECEIVED,
    "read": READ,
    "failed": FAILED,
    "undelivered": FAILED,
    "canceled": FAILED,
}
# Statuses of messages the account received, not of messages it sent.
INBOUND = frozenset({"receiving", "received"})
CHANNEL = "whatsapp:"


class TwilioStatusCallbackSchema(Schema):
    """The fields of a status callback Ticks reads; every other field is accepted."""

    class Meta:
        unknown = EXCLUDE

    MessageSid = Identifier(required=True, validate=validate.Length(max=MAX_ID_LENGTH))
    MessageStatus = fields.String(required=True, validate=validate.OneOf(list(STATUS_MAP)))
    AccountSid = Text(load_default=None)
    From = Text(load_default=None)
    To = Text(load_default=None)
    ErrorCode = Text(load_default=None)
    ErrorMessage = Text(load_default=None)


SCHEMA = TwilioStatusCallbackSchema()


def address(value: str | None) -> str | None:
    """``whatsapp:+5544999999999`` as ``+5544999999999``."""
    if value and value.lower().startswith(CHANNEL):
        return value[len(CHANNEL) :]
    return value or None


def failure_reason(status: str, code: str | None, message: str | None) -> str | None:
    """``<status>: <ErrorCode> <ErrorMessage>`` for a failure, None otherwise."""
    if STATUS_MAP[status] != FAILED:
        return None
    detail = " ".join(part for part in (code, message) if part)
    return f"{status}: {detail}" if detail else status


def parse(body: Any, *, received_at: datetime, request_id: str) -> Parsed:
    """Turn a status callback into one event; an inbound message's status is ignored."""
    if isinstance(body, dict) and body.get("MessageStatus") in INBOUND:
        return Parsed(events=[], ignored=f"inbound message ({body['MessageStatus']})")
    data = SCHEMA.load(body)
    status = data["MessageStatus"]
    return Parsed(
        events=[
            StatusEvent(
                provider="twilio",
                message_id=data["MessageSid"],
                status=STATUS_MAP[status],
                raw_status=status,
                occurred_at=received_at,  # Twilio sends no event time
                received_at=received_at,
                instance_id=address(data["From"]),
                failure_reason=failure_reason(status, data["ErrorCode"], data["ErrorMessage"]),
                request_id=request_id,
                **chat_fields(chat_identity(address(data["To"]))),
            )
        ]
    )
