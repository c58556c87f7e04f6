"""The webhook endpoint: authenticate, validate, enqueue; nothing more."""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, abort, current_app, g, jsonify, request
from marshmallow import ValidationError

from app.auth import token_matches
from app.errors import ApiError
from app.metrics import note_outcome
from app.queue import QueueUnavailable, enqueue, enqueue_events
from schemas.events import ConnectionEvent, dump_connections, dump_events
from schemas.proofs import Callback
from schemas.registry import JSON, REGISTRY, ProviderRecord, form_fields, load_body, providers
from workers.celery_app import QUARANTINE, RECORD_CONNECTIONS
from workers.core.redact import mask_message_id, mask_numbers

log = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__)
PARSERS = providers()
# hub.challenge is echoed as given; Meta's are short numbers.
MAX_CHALLENGE = 256


@bp.after_request
def tag_response(response: Response) -> Response:
    """Give the caller the callback's request id: the worker's log lines carry it too."""
    request_id = g.get("request_id")
    if request_id:
        response.headers["X-Request-Id"] = request_id
    return response


@bp.post("/webhooks/<provider>", defaults={"token": None, "event": None})
@bp.post("/webhooks/<provider>/<token>", defaults={"event": None})
@bp.post("/webhooks/<provider>/<token>/<event>")
def receive(provider: str, token: str | None, event: str | None) -> Response:
    """Accept one status callback from a provider (``event``: the name Evolution adds after
    the URL it was given, with webhook_by_events; the body names the event too)."""
    record = REGISTRY.get(provider)
    secrets = current_app.config["PROVIDER_SECRETS"]
    if (
        record is None
        or not record.configured(secrets)
        or (token is not None and not record.auth.in_path)
        or (event is not None and not record.event_suffix)
    ):
        abort(404)
    callback = Callback(
        token,
        request.headers,
        body=lambda: request.get_data(cache=True),
        url=called_url,
        form=lambda: form_fields(request.get_data(cache=True)),
    )
    try:
        proven = record.auth.verify(secrets, callback)
        if not proven and record.event_suffix and token is not None and event is None:
            # /webhooks/evolution/messages-update: the event name Evolution added to a URL
            # without a token, the token being in a header.
            proven = record.auth.verify(secrets, dataclasses.replace(callback, token=None))
    except ValueError:  # a form body that is not UTF-8 cannot have been signed by Twilio
        proven = False
    if not proven:
        raise ApiError(401, "missing or invalid " + record.auth.proof)
    body, raw = read_body(record)
    received_at = datetime.now(UTC)
    request_id = g.request_id = uuid.uuid4().hex
    try:
        parsed = PARSERS[provider](body, received_at=received_at, request_id=request_id)
    except ValidationError as err:
        return quarantine(record, raw, normalize_errors(err.messages), received_at, request_id)
    fields = {"provider": provider, "request_id": request_id}
    if parsed.ignored is not None:
        log.info(
            "ignored provider=%s type=%s",
            provider,
            parsed.ignored,
            extra={**fields, "outcome": "ignored", "type": parsed.ignored},
        )
        note_outcome("ignored")
        return jsonify(accepted=0, ignored=parsed.ignored)
    if parsed.connections:  # an instance connected, disconnected, was restricted...
        answer = record_connections(provider, parsed.connections, request_id)
        if not parsed.events and not parsed.errors:
            return answer
    if parsed.events:
        try:
            enqueue_events(dump_events(parsed.events))
        except QueueUnavailable:
            raise unavailable() from None
        note_outcome("accepted", len(parsed.events))
    if parsed.errors:  # the valid statuses are on their way; the body is kept for the rest
        errors = normalize_errors(parsed.errors)
        accepted = len(parsed.events) + len(parsed.connections)
        return quarantine(record, raw, errors, received_at, request_id, accepted)
    # Accepted callbacks are logged at INFO by the group that carried them to the broker
    # (app/queue.py: one line per task message, naming each callback's request id); one line
    # per callback would cost a tenth of the web's CPU for the same facts.
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "accepted provider=%s events=%d request_id=%s message_ids=%s",
            provider,
            len(parsed.events),
            request_id,
            ",".join(mask_message_id(e.message_id) for e in parsed.events[:10]),
            extra={
                **fields,
                "outcome": "accepted",
                "events": len(parsed.events),
                "message_ids": [mask_message_id(e.message_id) for e in parsed.events[:10]],
            },
        )
    return jsonify(accepted=len(parsed.events) + len(parsed.connections))


@bp.get("/webhooks/<provider>")
def handshake(provider: str) -> Response:
    """A provider's subscription check (Meta's: echo hub.challenge for a known verify token)."""
    record = REGISTRY.get(provider)
    if record is None:
        abort(404)
    if record.handshake is None:
        abort(405, valid_methods=["POST"])
    secrets = current_app.config["PROVIDER_SECRETS"]
    tokens = secrets.get(record.handshake.setting)
    # Verified without a secret to prove its POSTs, a subscription would be saved and every
    # POST refused (404) until the provider gives up and disables it: fail the check instead.
    if not tokens or not record.configured(secrets):
        abort(404)
    challenge = request.args.get("hub.challenge", "")
    if request.args.get("hub.mode") != "subscribe" or not challenge:
        raise ApiError(400, "expected hub.mode=subscribe and a hub.challenge")
    if len(challenge) > MAX_CHALLENGE or not challenge.isprintable():
        raise ApiError(400, "hub.challenge is not a short printable string")
    if not token_matches(request.args.get("hub.verify_token"), tokens):
        raise ApiError(403, f"hub.verify_token is not one of {record.handshake.setting}")
    log.info("subscription verified provider=%s", provider, extra={"provider": provider})
    return Response(challenge, mimetype="text/plain")


def read_body(record: ProviderRecord) -> tuple[Any, bytes]:
    """Return the body as the provider's parser takes it, and its raw bytes, or raise the
    matching 4xx."""
    if request.mimetype != record.media_type:
        raise ApiError(415, f"Content-Type must be {record.media_type}")
    raw = request.get_data(cache=True)  # over MAX_CONTENT_LENGTH: werkzeug raises 413
    try:
        return load_body(record.media_type, raw), raw
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        kind = "JSON" if record.media_type == JSON else "a form"
        raise ApiError(400, f"body is not valid {kind}") from None


def called_url() -> str:
    """The URL the provider called: PUBLIC_URL (required with a provider that signs it), and
    the path and query exactly as they came (a signature over the URL covers their bytes)."""
    base = current_app.config["PUBLIC_URL"].rstrip("/")
    raw_uri = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if not raw_uri:
        raw_uri = request.full_path.removesuffix("?")
    return base + raw_uri


def normalize_errors(messages: Any) -> Any:
    """Return marshmallow's error messages with string keys (list indexes become "0")."""
    if isinstance(messages, dict):
        return {str(key): normalize_errors(value) for key, value in messages.items()}
    return messages


def quarantine(
    provider: ProviderRecord,
    raw: bytes,
    errors: dict[str, Any],
    received_at: datetime,
    request_id: str,
    accepted: int = 0,
) -> Response:
    """Keep an invalid body through the queue, then answer as the provider needs (422, or
    200 where anything else makes it re-send the body or hold back what follows).
    ``accepted``: the body's valid events, already enqueued."""
    answer_ok = provider.invalid_status == 200
    record = {
        "request_id": request_id,
        "provider": provider.name,
        "reason": "validation",
        "errors": errors,
        "raw_body": raw.decode(
            json.detect_encoding(raw) if provider.media_type == JSON else "utf-8", "replace"
        ),
        "content_type": request.content_type,
        "received_at": received_at.isoformat(),
    }
    publish(QUARANTINE, record, request_id, f"[{provider.name} quarantine]")
    note_outcome("quarantined")
    log.warning(
        "invalid provider=%s request_id=%s fields=%s",
        provider.name,
        request_id,
        ",".join(sorted(errors)),
        extra={
            "provider": provider.name,
            "request_id": request_id,
            "outcome": "quarantined",
            "fields": sorted(errors),
        },
    )
    if answer_ok:
        return jsonify(accepted=accepted, quarantined=True, errors=errors)
    response = jsonify(error="invalid callback", errors=errors)
    response.status_code = 422
    return response


def publish(task_name: str, payload: Any, request_id: str, summary: str) -> None:
    """Enqueue, or answer 503 with Retry-After so the provider sends it again."""
    try:
        enqueue(task_name, payload, task_id=request_id, summary=summary)
    except QueueUnavailable:
        raise unavailable() from None


def record_connections(
    provider: str, connections: list[ConnectionEvent], request_id: str
) -> Response:
    """Enqueue an instance's connection events (seldom: one task message each callback)."""
    summary = f"[{provider} connection: {', '.join(c.state for c in connections)}]"
    # A task id of its own: the same body's statuses or quarantine are published under the
    # request id (the Redis ledger and delivery counts are kept by task id).
    task_id = f"{request_id}-connections"
    publish(RECORD_CONNECTIONS, dump_connections(connections), task_id, summary)
    note_outcome("accepted", len(connections))
    log.info(
        "accepted connection provider=%s instance_id=%s state=%s raw_state=%s request_id=%s",
        provider,
        mask_numbers(connections[0].instance_id),
        connections[0].state,
        connections[0].raw_state,
        request_id,
        extra={"provider": provider, "request_id": request_id, "outcome": "accepted"},
    )
    return jsonify(accepted=len(connections))


def unavailable() -> ApiError:
    """The 503 a provider retries later."""
    retry_after = str(current_app.config["RETRY_AFTER_SECONDS"])
    return ApiError(503, "queue unavailable", {"Retry-After": retry_after})
