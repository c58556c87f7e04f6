"""The read API: a message's status and history, behind API_TOKEN."""

from __future__ import annotations

from datetime import datetime

import psycopg
import pytest

from schemas.events import StatusEvent
from schemas.registry import providers
from tests.conftest import API_TOKEN, load_fixture
from workers.core import store

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
PARSERS = providers()


def apply_fixture(db, provider: str, name: str) -> list[StatusEvent]:
    received = datetime.fromisoformat("2026-11-22T10:00:00+00:00")
    events = PARSERS[provider](
        load_fixture(provider, name), received_at=received, request_id="r"
    ).events
    with db.transaction():
        store.apply_events(db, events)
    return events


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Bearer " + API_TOKEN[:-1]},
        {"Authorization": "Basic " + API_TOKEN + " x"},
    ],
)
def test_read_api_refuses_without_its_token(client, headers):
    response = client.get("/messages/zapi/999999999999999999999", headers=headers)
    assert response.status_code == 401
    assert response.json["error"]
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_unknown_message_is_404(client):
    response = client.get("/messages/zapi/nope", headers=AUTH)
    assert response.status_code == 404
    assert response.json == {"error": "message not found"}


@pytest.mark.parametrize("message_id", ["%00", "a%00b", "x" * 300])
def test_an_id_that_cannot_exist_is_404_not_500(client, message_id):
    response = client.get(f"/messages/zapi/{message_id}", headers=AUTH)
    assert response.status_code == 404
    assert response.json == {"error": "message not found"}


def test_message_shows_status_times_and_history(client, db):
    apply_fixture(db, "zapi", "seed_read")
    apply_fixture(db, "zapi", "seed_sent")
    response = client.get("/messages/zapi/999999999999999999999", headers=AUTH)
    assert response.status_code == 200
    body = response.json
    assert list(body) == [
        "provider",
        "message_id",
        "status",
        "phone",
        "chat_id",
        "chat_kind",
        "is_group",
        "instance_id",
        "sent_at",
        "received_at",
        "read_at",
        "played_at",
        "failed_at",
        "read_by_me_at",
        "failure_reason",
        "updated_at",
        "events",
        "receipts",
    ]
    assert body["status"] == "read"
    assert body["phone"] == "5544999999999"  # whole: the caller is trusted
    assert body["sent_at"] == "2021-09-21T14:30:45+00:00"
    assert body["read_at"] == "2021-09-21T14:30:45+00:00"
    assert body["received_at"] is None
    assert datetime.fromisoformat(body["updated_at"]).utcoffset() is not None
    assert [(e["status"], e["raw_status"], e["applied"]) for e in body["events"]] == [
        ("read", "READ", True),
        ("sent", "SENT", False),
    ]
    assert body["events"][0]["received_at"] == "2026-11-22T10:00:00+00:00"


def test_green_api_failure_shows_reason(client, db):
    apply_fixture(db, "greenapi", "seed_failed")
    body = client.get("/messages/greenapi/3EB0608D6A2901063D63", headers=AUTH).json
    assert body["status"] == "failed"
    assert body["failure_reason"].startswith("failed: Parameter value is not valid")
    assert body["failed_at"] == "2020-04-12T14:13:22+00:00"
    assert body["chat_id"] == "11001234567890@c.us"


def test_status_and_history_are_read_in_one_snapshot(client, db, database_url, monkeypatch):
    """A transaction committing between the read of the message and of its events must not
    show a status behind its own history (seen in CI: status "sent" beside a READ event)."""
    apply_fixture(db, "zapi", "seed_sent")
    execute = psycopg.Cursor.execute

    def interleaved(cursor, query, *args, **kwargs):
        result = execute(cursor, query, *args, **kwargs)
        if query is store.SELECT_MESSAGE:
            with psycopg.connect(database_url, autocommit=True) as other:
                apply_fixture(other, "zapi", "seed_read")
        return result

    monkeypatch.setattr(psycopg.Cursor, "execute", interleaved)
    body = client.get("/messages/zapi/999999999999999999999", headers=AUTH).json
    monkeypatch.undo()
    assert [e["status"] for e in body["events"]] == ["sent"]
    assert body["status"] == "sent"
    after = client.get("/messages/zapi/999999999999999999999", headers=AUTH).json
    assert after["status"] == "read"
    assert sorted(e["status"] for e in after["events"]) == ["read", "sent"]
