"""What the HTTP API answers, as marshmallow schemas: the source of /openapi.json."""

from __future__ import annotations

from marshmallow import EXCLUDE, RAISE, Schema, fields, validate

from schemas.events import CONNECTION_STATES
from schemas.failures import CLASSES
from schemas.registry import PROVIDERS
from schemas.statuses import HEALTHS, STATUSES


class AcceptedSchema(Schema):
    """The answer to a webhook the endpoint took (or kept in quarantine, for Green-API and Meta)."""

    accepted = fields.Integer(required=True, metadata={"description": "events enqueued"})
    ignored = fields.String(metadata={"description": "another webhook type, not a status"})
    quarantined = fields.Boolean(
        metadata={
            "description": "Green-API, Meta: the invalid body (for Meta, its invalid part: the "
            "valid statuses are counted in accepted) kept in quarantine"
        }
    )
    errors = fields.Dict(metadata={"description": "field -> messages, when quarantined"})


class ErrorSchema(Schema):
    """Every error answer."""

    error = fields.String(required=True)
    errors = fields.Dict(metadata={"description": "field -> messages, when a field is wrong"})


class EventSchema(Schema):
    """One distinct event a message received."""

    status = fields.String(required=True)
    raw_status = fields.String(required=True)
    occurred_at = fields.DateTime(required=True)
    received_at = fields.DateTime(required=True)
    applied = fields.Boolean(required=True, metadata={"description": "false: the rules kept it"})


class ParticipantReceiptSchema(Schema):
    """One group participant's receipts of a message."""

    participant = fields.String(required=True, metadata={"description": "as the provider names it"})
    status = fields.String(required=True, metadata={"description": "the furthest it reached"})
    seen = fields.Dict(
        keys=fields.String(),
        values=fields.DateTime(),
        required=True,
        metadata={"description": "status -> when this participant's receipt of it happened"},
    )


class ReceiptsSchema(Schema):
    """A group message's receipts, per participant."""

    participants = fields.List(fields.Nested(ParticipantReceiptSchema), required=True)
    counts = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        required=True,
        metadata={
            "description": "status -> participants that reached it (read counts as received)"
        },
    )


class MessageStateSchema(Schema):
    """Where a message stands: the furthest status and when each was first seen."""

    provider = fields.String(required=True)
    message_id = fields.String(required=True)
    status = fields.String(required=True, allow_none=True)
    phone = fields.String(required=True, allow_none=True)
    chat_id = fields.String(required=True, allow_none=True)
    chat_kind = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "user (phone set), lid, group or broadcast"},
    )
    is_group = fields.Boolean(required=True, allow_none=True)
    instance_id = fields.String(required=True, allow_none=True)
    sent_at = fields.DateTime(required=True, allow_none=True)
    received_at = fields.DateTime(required=True, allow_none=True)
    read_at = fields.DateTime(required=True, allow_none=True)
    played_at = fields.DateTime(required=True, allow_none=True)
    failed_at = fields.DateTime(required=True, allow_none=True)
    read_by_me_at = fields.DateTime(required=True, allow_none=True)
    failure_reason = fields.String(required=True, allow_none=True)
    updated_at = fields.DateTime(required=True)


class MessageSchema(MessageStateSchema):
    """A message's one truth: the furthest status, when each was first seen, its history."""

    events = fields.List(fields.Nested(EventSchema), required=True)
    receipts = fields.Nested(
        ReceiptsSchema,
        required=True,
        allow_none=True,
        metadata={"description": "group messages: each participant's receipts; else null"},
    )


class ChangeSchema(Schema):
    """One change: what took effect, when it happened."""

    cursor = fields.String(required=True, metadata={"description": "read on after this"})
    type = fields.String(
        required=True,
        validate=validate.OneOf(["message.status", "message.receipt", "instance.health"]),
        metadata={
            "description": "a message's status, a group member's receipt, or an instance's health"
        },
    )
    provider = fields.String(required=True)
    message_id = fields.String(
        required=True, allow_none=True, metadata={"description": "null for instance.health"}
    )
    status = fields.String(
        required=True,
        metadata={"description": "the status reached (read_by_me: the account read it)"},
    )
    previous_status = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "the message's (or, with participant, the member's) before"},
    )
    participant = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "a group member's receipt; null: the message itself"},
    )
    occurred_at = fields.DateTime(required=True)
    failure_reason = fields.String(required=True, allow_none=True)
    chat_id = fields.String(required=True, allow_none=True)
    instance_id = fields.String(required=True, allow_none=True)
    health = fields.String(
        validate=validate.OneOf(HEALTHS),
        metadata={"description": "instance.health only: the instance's health now"},
    )
    previous_health = fields.String(
        allow_none=True,
        validate=validate.OneOf(HEALTHS),
        metadata={"description": "instance.health only: before (null: first judged)"},
    )
    reason = fields.String(allow_none=True, metadata={"description": "instance.health only: why"})
    figures = fields.Dict(
        allow_none=True,
        metadata={
            "description": "instance.health only: numerator, denominator, window_minutes, "
            "samples (message ids) and what else it was judged on"
        },
    )


class ChangePageSchema(Schema):
    changes = fields.List(fields.Nested(ChangeSchema), required=True)
    next = fields.String(
        required=True, metadata={"description": "the cursor to ask with next (after=...)"}
    )


class ReportedSchema(Schema):
    """What the provider last reported of an instance's connection."""

    state = fields.String(
        required=True,
        validate=validate.OneOf(CONNECTION_STATES),
        metadata={"description": "connected, connecting, disconnected, restricted or banned"},
    )
    raw_state = fields.String(required=True, metadata={"description": "the provider's words"})
    reason = fields.String(required=True, allow_none=True)
    at = fields.DateTime(required=True, metadata={"description": "when it happened"})
    since = fields.DateTime(required=True, metadata={"description": "in this state since"})


class InstanceSchema(Schema):
    """A sending number (an instance: Z-API's instanceId, Green-API's idInstance, WAHA's
    session, Evolution's instance, Meta's phone number id, Twilio's sender)."""

    provider = fields.String(required=True)
    instance_id = fields.String(required=True)
    health = fields.String(
        required=True,
        allow_none=True,
        validate=validate.OneOf(HEALTHS),
        metadata={"description": "null until a worker first judged it (docs/operations.md)"},
    )
    since = fields.DateTime(
        required=True, allow_none=True, metadata={"description": "when it entered its health"}
    )
    health_reason = fields.String(required=True, allow_none=True)
    health_figures = fields.Dict(required=True, allow_none=True)
    last_hour = fields.Nested(
        "InsightSchema",
        required=True,
        allow_none=True,
        metadata={"description": "its funnel over the last hour's messages; null: none sent"},
    )
    reported = fields.Nested(
        ReportedSchema,
        required=True,
        allow_none=True,
        metadata={"description": "null: its provider never reported its connection"},
    )
    last_status_at = fields.DateTime(
        required=True,
        allow_none=True,
        metadata={"description": "when a status of its messages was last applied (to the minute)"},
    )


class InstanceListSchema(Schema):
    instances = fields.List(fields.Nested(InstanceSchema), required=True)


class InsightsQuerySchema(Schema):
    """GET /insights' query: the window (by when messages were sent), filters, a bucket."""

    class Meta:
        unknown = RAISE

    since = fields.AwareDateTime(
        format="iso", metadata={"description": "sent at or after (default: until less a day)"}
    )
    until = fields.AwareDateTime(
        format="iso", metadata={"description": "sent before (default: the end of this minute)"}
    )
    provider = fields.String(validate=validate.OneOf(PROVIDERS))
    instance_id = fields.String(validate=validate.Length(1, 256))
    bucket = fields.String(validate=validate.OneOf(["hour", "day"]))


class QuantilesSchema(Schema):
    p50 = fields.Float(required=True, allow_none=True)
    p90 = fields.Float(required=True, allow_none=True)
    p99 = fields.Float(required=True, allow_none=True)


class RatiosSchema(Schema):
    delivered = fields.Float(required=True, allow_none=True)
    read = fields.Float(required=True, allow_none=True)
    failed = fields.Float(required=True, allow_none=True)
    stuck = fields.Float(required=True, allow_none=True)


class FailureCountSchema(Schema):
    class_ = fields.String(
        data_key="class",
        required=True,
        validate=validate.OneOf(CLASSES),
    )
    reason = fields.String(required=True, metadata={"description": "the provider's code"})
    count = fields.Integer(required=True)


class InsightSchema(Schema):
    """One instance's funnel over the messages sent in [since, until) (docs/operations.md
    defines each figure)."""

    provider = fields.String(required=True)
    instance_id = fields.String(required=True, allow_none=True)
    since = fields.DateTime(required=True)
    until = fields.DateTime(required=True)
    sent = fields.Integer(required=True)
    delivered = fields.Integer(required=True, metadata={"description": "received, read or played"})
    read = fields.Integer(required=True, metadata={"description": "read or played"})
    played = fields.Integer(required=True)
    failed = fields.Integer(required=True)
    stuck = fields.Integer(
        required=True, metadata={"description": "still at sent, sent more than STUCK_AFTER ago"}
    )
    ratios = fields.Nested(RatiosSchema, required=True)
    time_to_deliver = fields.Nested(QuantilesSchema, required=True, metadata={"description": "s"})
    time_to_read = fields.Nested(QuantilesSchema, required=True, metadata={"description": "s"})
    failures = fields.List(fields.Nested(FailureCountSchema), required=True)
    provisional = fields.Boolean(
        required=True, metadata={"description": "until is less than 24 hours ago"}
    )


class InsightListSchema(Schema):
    insights = fields.List(fields.Nested(InsightSchema), required=True)


class MessageListQuerySchema(Schema):
    """GET /messages' query: filters, a page size and the cursor of the page before."""

    class Meta:
        unknown = RAISE

    provider = fields.String(validate=validate.OneOf(PROVIDERS))
    status = fields.String(validate=validate.OneOf(STATUSES))
    instance_id = fields.String(validate=validate.Length(1, 256))
    phone = fields.String(validate=validate.Length(1, 64))
    since = fields.AwareDateTime(format="iso", metadata={"description": "created at or after"})
    until = fields.AwareDateTime(format="iso", metadata={"description": "created before"})
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))
    cursor = fields.String(validate=validate.Length(1, 2048))


class ChangeQuerySchema(Schema):
    """GET /changes' query: the cursor to read after, a page size, a long poll's wait."""

    class Meta:
        unknown = EXCLUDE  # other parameters are ignored

    after = fields.String(
        load_default="0",
        validate=validate.Regexp(
            r"(0|[0-9]{1,20}-[0-9]{1,19})\Z", error="not a cursor this API gave"
        ),
    )
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))
    wait = fields.Float(load_default=0.0, allow_nan=False, validate=validate.Range(0, 30))


class MessageSummarySchema(MessageStateSchema):
    """A message in a list: where it stands, without its history."""

    created_at = fields.DateTime(required=True)


class MessagePageSchema(Schema):
    messages = fields.List(fields.Nested(MessageSummarySchema), required=True)
    next = fields.String(
        required=True, allow_none=True, metadata={"description": "cursor of the next page"}
    )


class HealthSchema(Schema):
    status = fields.String(required=True)


class ReadySchema(Schema):
    status = fields.String()
    error = fields.String()
    broker = fields.String(required=True, metadata={"description": "ok or unavailable"})
    database = fields.String(required=True, metadata={"description": "ok or unavailable"})


class QuarantinedSchema(Schema):
    """A body that failed validation, kept for replay."""

    id = fields.Integer(required=True)
    request_id = fields.String(required=True)
    provider = fields.String(required=True)
    reason = fields.String(required=True)
    errors = fields.Dict(required=True)
    received_at = fields.DateTime(required=True)
    created_at = fields.DateTime(required=True)
    replayed_at = fields.DateTime(required=True, allow_none=True)
    discarded_at = fields.DateTime(required=True, allow_none=True)
    raw_body = fields.String(metadata={"description": "only in GET /quarantine/{id}"})
    content_type = fields.String(allow_none=True)


class QuarantineListSchema(Schema):
    items = fields.List(fields.Nested(QuarantinedSchema), required=True)


class DeadLetterSchema(Schema):
    """A task message the workers gave up on, kept for replay."""

    id = fields.Integer(required=True)
    task_id = fields.String(required=True)
    task_name = fields.String(required=True)
    error = fields.String(required=True)
    deliveries = fields.Integer(required=True)
    created_at = fields.DateTime(required=True)
    replayed_at = fields.DateTime(required=True, allow_none=True)
    discarded_at = fields.DateTime(required=True, allow_none=True)
    events = fields.Integer(required=True, allow_none=True)
    payload = fields.Raw(metadata={"description": "only in GET /dead-letters/{id}"})


class DeadLetterListSchema(Schema):
    items = fields.List(fields.Nested(DeadLetterSchema), required=True)


class ErasureRequestSchema(Schema):
    phone = fields.String(
        required=True,
        metadata={"description": "the number, with country code, in any format"},
    )


class ErasureSchema(Schema):
    """An erasure: never the number."""

    id = fields.Integer(required=True)
    status = fields.String(
        required=True, metadata={"description": "pending (a worker will do it) or done"}
    )
    requested_at = fields.DateTime(required=True)
    erased_at = fields.DateTime(required=True, allow_none=True)
    rows = fields.Dict(
        keys=fields.String(),
        values=fields.Dict(keys=fields.String(), values=fields.Integer()),
        required=True,
        allow_none=True,
        metadata={
            "description": "once done: removed, the person's own messages and their history, "
            "per table; anonymised, rows where the number was replaced by a random token, "
            "per table"
        },
    )
