"""Meta's WhatsApp Cloud API: the ``messages`` field of a WhatsApp Business Account webhook,
and the ``phone_number_quality_update`` and ``account_update`` fields as connection reports.

One POST may hold several entries, each several changes, each several statuses; every status
becomes an event (libraries that read only the first have lost statuses: pywa#229,
netflie/whatsapp-cloud-api#132). ``messages[]`` (incoming messages), ``contacts`` and other
fields are not statuses: a body with none is ignored.

Shapes from developers.facebook.com/docs/whatsapp/cloud-api/webhooks/components (status
object) and the typed payloads of whatsapp-api-js (``ServerStatusPayload``): in a group,
``recipient_type`` is ``"group"``, ``recipient_id`` the group and
``recipient_participant_id`` the member the receipt is from.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from schemas.events import MAX_ID_LENGTH, ConnectionEvent, Parsed, StatusEvent, chat_fields
from schemas.fields import EpochTimestamp, Identifier, Text, chat_identity
from schemas.statuses import FAILED, PLAYED, READ, RECEIVED, SENT

OBJECT = "whatsapp_business_account"
FIELD = "messages"
STATUS_MAP = {
    "sent": SENT,
    "delivered": RECEIVED,
    "read": READ,
    "played": PLAYED,
    "failed": FAILED,
}
# A bound on the statuses of one body, as for Z-API's ids: one POST cannot become a flood.
MAX_STATUSES = 1000


class MetaErrorDataSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    details = Text(load_default=None, allow_none=True)


class MetaErrorSchema(Schema):
    """One of a failed status' ``errors[]``."""

    class Meta:
        unknown = EXCLUDE

    code = Identifier(load_default=None, allow_none=True)
    title = Text(load_default=None, allow_none=True)
    message = Text(load_default=None, allow_none=True)
    error_data = fields.Nested(MetaErrorDataSchema, load_default=None, allow_none=True)


class MetaStatusSchema(Schema):
    """One status of ``value.statuses[]``; unknown fields (pricing, conversation...) ignored."""

    class Meta:
        unknown = EXCLUDE

    id = Identifier(required=True, validate=validate.Length(max=MAX_ID_LENGTH))
    status = fields.String(required=True, validate=validate.OneOf(list(STATUS_MAP)))
    timestamp = EpochTimestamp(per_second=1, required=True)
    recipient_id = Identifier(load_default=None, allow_none=True)
    recipient_type = fields.String(load_default=None, allow_none=True)
    recipient_participant_id = Identifier(
        load_default=None, allow_none=True, validate=validate.Length(max=MAX_ID_LENGTH)
    )
    errors = fields.List(fields.Nested(MetaErrorSchema), load_default=None, allow_none=True)


class MetaMetadataSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    display_phone_number = fields.String(load_default=None, allow_none=True)
    phone_number_id = Identifier(load_default=None, allow_none=True)


class MetaValueSchema(Schema):
    """The ``value`` of a ``messages`` change."""

    class Meta:
        unknown = EXCLUDE

    messaging_product = fields.String(load_default=None, allow_none=True)
    metadata = fields.Nested(MetaMetadataSchema, load_default=None, allow_none=True)
    # parse() validates each status on its own: one that Meta does not send as documented
    # must not hold back the others of the batch.
    statuses = fields.List(fields.Nested(MetaStatusSchema), load_default=list)
    messages = fields.List(fields.Raw(), load_default=None, allow_none=True)


class MetaChangeSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    field = fields.String(required=True)
    value = fields.Nested(MetaValueSchema, required=True)


class MetaEntrySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    id = Identifier(load_default=None, allow_none=True)
    time = EpochTimestamp(per_second=1, load_default=None, allow_none=True)
    changes = fields.List(fields.Nested(MetaChangeSchema), required=True)


class MetaWebhookSchema(Schema):
    """A WhatsApp Business Account webhook POST."""

    class Meta:
        unknown = EXCLUDE

    object = fields.String(required=True)
    entry = fields.List(fields.Nested(MetaEntrySchema), required=True)


SCHEMA = MetaWebhookSchema()
STATUS_SCHEMA = MetaStatusSchema()


def failure_reason(errors: list[dict[str, Any]] | None) -> str | None:
    """Return ``code title: details`` for each error, joined; None without errors."""
    reasons = []
    for error in errors or []:
        head = " ".join(str(part) for part in (error["code"], error["title"]) if part)
        details = (error["error_data"] or {}).get("details") or error["message"]
        if details and details != error["title"]:
            head = f"{head}: {details}" if head else details
        if head:
            reasons.append(head)
    return "; ".join(reasons) or None


@dataclasses.dataclass
class Envelope:
    """A body taken apart: its ``messages`` changes with their statuses set aside (each is
    validated on its own), and the names of the other fields it held (another field's value
    is not ours to validate)."""

    body: Any
    statuses: dict[tuple[int, int], list[Any]] = dataclasses.field(default_factory=dict)
    others: list[str] = dataclasses.field(default_factory=list)
    # A sending number's or account's health reports: (entry index, field, value).
    reports: list[tuple[int, str, Any]] = dataclasses.field(default_factory=list)


def take_apart(body: Any) -> Envelope:
    """Split a body as Envelope says."""
    if not isinstance(body, dict) or not isinstance(body.get("entry"), list):
        return Envelope(body)
    envelope = Envelope({**body, "entry": []})
    for i, entry in enumerate(body["entry"]):
        if isinstance(entry, dict) and isinstance(entry.get("changes"), list):
            changes: list[Any] = []
            for change in entry["changes"]:
                name = change.get("field", FIELD) if isinstance(change, dict) else FIELD
                value = change.get("value") if isinstance(change, dict) else None
                if name != FIELD:  # kept in its place, so every index named stays true
                    envelope.others.append(str(name))
                    if name in REPORT_FIELDS:
                        envelope.reports.append((i, str(name), value))
                    change = {"field": str(name), "value": {}}
                elif isinstance(value, dict) and isinstance(value.get("statuses"), list):
                    envelope.statuses[(i, len(changes))] = value["statuses"]
                    change = {**change, "value": {**value, "statuses": []}}
                changes.append(change)
            entry = {**entry, "changes": changes}
        envelope.body["entry"].append(entry)
    return envelope


def status_event(
    status: dict[str, Any], instance_id: str | None, received_at: datetime, request_id: str
) -> StatusEvent:
    """One status as an event."""
    in_group = status["recipient_type"] == "group"
    chat = chat_identity(status["recipient_id"], is_group=in_group or None)
    return StatusEvent(
        provider="meta",
        message_id=status["id"],
        status=STATUS_MAP[status["status"]],
        raw_status=status["status"],
        occurred_at=status["timestamp"],
        received_at=received_at,
        instance_id=instance_id,
        participant=status["recipient_participant_id"] if in_group else None,
        failure_reason=(failure_reason(status["errors"]) if status["status"] == "failed" else None),
        request_id=request_id,
        **chat_fields(chat, in_group or None),
    )


# A number's quality and an account's standing (docs/research-connection-events.md, "Meta"):
# phone_number_quality_update names the business number (display_phone_number), account_update
# the WhatsApp Business Account (the entry's id; a legacy one named its phone_number).
REPORT_FIELDS = ("phone_number_quality_update", "account_update")
QUALITY_STATES = {
    "FLAGGED": "restricted",  # quality low: its messaging limit may drop
    "DOWNGRADE": "restricted",  # its messaging limit was reduced
    "UNFLAGGED": "connected",
    "UPGRADE": "connected",
    "THROUGHPUT_UPGRADE": "connected",
    "ONBOARDING": "connecting",  # still registering
}
BAN_STATES = {"DISABLE": "banned", "SCHEDULE_FOR_DISABLE": "restricted", "REINSTATE": "connected"}
ACCOUNT_STATES = {
    "ACCOUNT_RESTRICTION": "restricted",
    "ACCOUNT_VIOLATION": "restricted",
    "ACCOUNT_OFFBOARDED": "disconnected",  # a device change or the number re-registered
    "ACCOUNT_RECONNECTED": "connected",
    "PARTNER_REMOVED": "disconnected",
}


class QualityUpdateSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    display_phone_number = Identifier(required=True)
    event = Text(required=True)
    current_limit = Text(load_default=None, allow_none=True)


class AccountUpdateSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    event = Text(required=True)
    phone_number = Identifier(load_default=None, allow_none=True)
    restriction_info = fields.List(fields.Dict(), load_default=list)
    violation_info = fields.Dict(load_default=None, allow_none=True)
    ban_info = fields.Dict(load_default=None, allow_none=True)
    waba_info = fields.Dict(load_default=None, allow_none=True)
    disconnection_info = fields.Dict(load_default=None, allow_none=True)


QUALITY_SCHEMA = QualityUpdateSchema()
ACCOUNT_SCHEMA = AccountUpdateSchema()


def report_event(
    field: str, value: Any, entry: dict[str, Any], received_at: datetime, request_id: str
) -> ConnectionEvent | None:
    """A quality or account report as a connection event; None for one that says nothing of
    the number's health (PARTNER_ADDED, pricing...). Raises ValidationError for a bad one."""
    occurred_at = entry["time"] or received_at
    if field == "phone_number_quality_update":
        data = QUALITY_SCHEMA.load(value)
        state = QUALITY_STATES.get(data["event"])
        if state is None:  # an event not known to say anything of the number's health
            return None
        limit = data["current_limit"]
        return ConnectionEvent(
            provider="meta",
            instance_id=data["display_phone_number"],
            state=state,
            raw_state=data["event"],
            occurred_at=occurred_at,
            received_at=received_at,
            reason=f"messaging limit {limit}" if limit else None,
            request_id=request_id,
        )
    data = ACCOUNT_SCHEMA.load(value)
    event = data["event"]
    reason = None
    if event == "DISABLED_UPDATE":
        ban = str((data["ban_info"] or {}).get("waba_ban_state", ""))
        state = BAN_STATES.get(ban)
        raw, reason = f"{event} {ban}".strip(), (data["ban_info"] or {}).get("waba_ban_date")
    else:
        state, raw = ACCOUNT_STATES.get(event), event
        if event == "ACCOUNT_RESTRICTION":
            kinds = [str(r.get("restriction_type")) for r in data["restriction_info"]]
            reason = ", ".join(kinds) or None
        elif event == "ACCOUNT_VIOLATION":
            reason = (data["violation_info"] or {}).get("violation_type")
        elif event == "PARTNER_REMOVED":
            reason = (data["disconnection_info"] or {}).get("reason")
    if state is None:
        return None
    waba = (data["waba_info"] or {}).get("waba_id") or entry["id"]
    instance = data["phone_number"] or waba
    if not instance:
        raise ValidationError({"entry": {"id": ["Missing data for required field."]}})
    return ConnectionEvent(
        provider="meta",
        instance_id=str(instance),
        state=state,
        raw_state=raw,
        occurred_at=occurred_at,
        received_at=received_at,
        reason=str(reason) if reason else None,
        request_id=request_id,
    )


def parse(body: Any, *, received_at: datetime, request_id: str) -> Parsed:
    """Turn a WhatsApp Business Account webhook into one event per status, in every entry."""
    kind = body.get("object") if isinstance(body, dict) else None
    if isinstance(kind, str) and kind != OBJECT:
        return Parsed(events=[], ignored=kind)
    envelope = take_apart(body)
    data = SCHEMA.load(envelope.body)
    if sum(map(len, envelope.statuses.values())) > MAX_STATUSES:
        raise ValidationError({"entry": [f"More than {MAX_STATUSES} statuses in one body."]})
    events: list[StatusEvent] = []
    errors: dict[str, Any] = {}
    incoming = False
    for i, entry in enumerate(data["entry"]):
        for j, change in enumerate(entry["changes"]):
            if change["field"] != FIELD:
                continue
            value = change["value"]
            instance_id = (value["metadata"] or {}).get("phone_number_id")
            incoming = incoming or bool(value["messages"])
            for k, raw in enumerate(envelope.statuses.get((i, j), [])):
                try:
                    status = STATUS_SCHEMA.load(raw)
                except ValidationError as err:
                    path = errors.setdefault("entry", {}).setdefault(i, {})
                    path = path.setdefault("changes", {}).setdefault(j, {})
                    path.setdefault("value", {}).setdefault("statuses", {})[k] = err.messages
                    continue
                events.append(status_event(status, instance_id, received_at, request_id))
    reports = []
    for i, field, value in envelope.reports:
        try:
            report = report_event(field, value, data["entry"][i], received_at, request_id)
        except ValidationError as err:
            errors.setdefault("entry", {}).setdefault(i, {})[field] = err.messages
            continue
        if report is not None:
            reports.append(report)
    if errors and not events and not reports:
        raise ValidationError(errors)
    if not events and not reports:
        ignored = "messages" if incoming else (envelope.others or ["no statuses"])[0]
        return Parsed(events=[], ignored=ignored)
    return Parsed(events=events, errors=errors or None, connections=reports)
