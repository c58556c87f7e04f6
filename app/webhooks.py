"""The webhook endpoint: authenticate, validate, enqueue; nothing more."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, abort, current_app, g, jsonify, request
from marshmallow import ValidationError

from app.auth import header_token, token_matches
from app.errors import ApiError
from app.metrics import note_outcome
from app.queue import QueueUnavailable, enqueue, enqueue_events
from schemas import providers
from schemas.events import dump_events
from workers.celery_app import QUARANTINE

log = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__)
PARSERS = providers()
# Green-API re-sends on anything but 200 and holds every later notification of the
# instance behind it for up to 24 h, so its invalid bodies are answered 200 (quarantined).
ANSWER_INVALID_WITH_200 = frozenset({"greenapi"})


@bp.after_request
def tag_response(response: Response) -> Response:
    """Give the caller the callback's request id: the worker's log lines carry it too."""
    request_id = g.get("request_id")
    if request_id:
        response.headers["X-Request-Id"] = request_id
    return response


@bp.post("/webhooks/<provider>", defaults={"token": None})
@bp.post("/webhooks/<provider>/<token>")
def receive(provider: str, token: str | None) -> Response:
    """Accept one status callback from a provider."""
    accepted_tokens = current_app.config["WEBHOOK_TOKENS"].get(provider)
    if provider not in PARSERS or not accepted_tokens:
        abort(404)
    if not token_matches(
        token or header_token(request.headers.get("Authorization")), accepted_tokens
    ):
        raise ApiError(401, "missing or invalid token")
    body, raw = read_json_body()
    received_at = datetime.now(UTC)
    request_id = g.request_id = uuid.uuid4().hex
    try:
        parsed = PARSERS[provider](body, received_at=received_at, request_id=request_id)
    except ValidationError as err:
        return quarantine(provider, raw, normalize_errors(err.messages), received_at, request_id)
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
    try:
        enqueue_events(dump_events(parsed.events))
    except QueueUnavailable:
        raise unavailable() from None
    note_outcome("accepted", len(parsed.events))
    log.info(
        "accepted provider=%s events=%d request_id=%s message_ids=%s",
        provider,
        len(parsed.events),
        request_id,
        ",".join(e.message_id for e in parsed.events[:10]),
        extra={
            **fields,
            "outcome": "accepted",
            "events": len(parsed.events),
            "message_ids": [e.message_id for e in parsed.events[:10]],
        },
    )
    return jsonify(accepted=len(parsed.events))


def read_json_body() -> tuple[Any, bytes]:
    """Return the parsed JSON body and its raw bytes, or raise the matching 4xx."""
    if request.mimetype != "application/json":
        raise ApiError(415, "Content-Type must be application/json")
    raw = request.get_data(cache=True)  # over MAX_CONTENT_LENGTH: werkzeug raises 413
    try:
        return json.loads(raw), raw
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        raise ApiError(400, "body is not valid JSON") from None


def normalize_errors(messages: Any) -> Any:
    """Return marshmallow's error messages with string keys (list indexes become "0")."""
    if isinstance(messages, dict):
        return {str(key): normalize_errors(value) for key, value in messages.items()}
    return messages


def quarantine(
    provider: str, raw: bytes, errors: dict[str, Any], received_at: datetime, request_id: str
) -> Response:
    """Keep an invalid body through the queue, then answer 422 (200 for Green-API)."""
    record = {
        "request_id": request_id,
        "provider": provider,
        "reason": "validation",
        "errors": errors,
        "raw_body": raw.decode(json.detect_encoding(raw), errors="replace"),
        "content_type": request.content_type,
        "received_at": received_at.isoformat(),
    }
    publish(QUARANTINE, record, request_id, f"[{provider} quarantine]")
    note_outcome("quarantined")
    log.warning(
        "invalid provider=%s request_id=%s fields=%s",
        provider,
        request_id,
        ",".join(sorted(errors)),
        extra={
            "provider": provider,
            "request_id": request_id,
            "outcome": "quarantined",
            "fields": sorted(errors),
        },
    )
    if provider in ANSWER_INVALID_WITH_200:
        return jsonify(accepted=0, quarantined=True, errors=errors)
    response = jsonify(error="invalid callback", errors=errors)
    response.status_code = 422
    return response


def publish(task_name: str, payload: Any, request_id: str, summary: str) -> None:
    """Enqueue, or answer 503 with Retry-After so the provider sends it again."""
    try:
        enqueue(task_name, payload, task_id=request_id, summary=summary)
    except QueueUnavailable:
        raise unavailable() from None


def unavailable() -> ApiError:
    """The 503 a provider retries later."""
    retry_after = str(current_app.config["RETRY_AFTER_SECONDS"])
    return ApiError(503, "queue unavailable", {"Retry-After": retry_after})
