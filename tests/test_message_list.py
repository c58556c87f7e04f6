"""GET /messages: filtered lists, keyset pages stable under writes, each filter on its index,
and `flask --app app export` as CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from psycopg import sql

from schemas.events import StatusEvent
from tests.conftest import API_TOKEN, free_port, make_app
from workers.core import store

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
T0 = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)


def event(message_id, status, provider="zapi", phone="5544999999999", instance="inst-a"):
    return StatusEvent(
        provider=provider,
        message_id=message_id,
        status=status,
        raw_status=status,
        occurred_at=T0,
        received_at=T0,
        phone=phone,
        chat_id=phone,
        chat_kind="user",
        is_group=False,
        instance_id=instance,
    )


def seed(db):
    """Six messages created an hour apart from T0, in this order."""
    rows = [
        event("A1", "sent"),
        event("A2", "failed", phone="5511988887777"),
        event("B1", "read", provider="greenapi", instance="inst-b"),
        event("A3", "received", instance="inst-b"),
        event("B2", "failed", provider="greenapi", phone="5511988887777"),
        event("A4", "read"),
    ]
    for hour, row in enumerate(rows):
        store.apply_events(db, [row])
        db.execute(
            "UPDATE messages SET created_at = %s WHERE message_id = %s",
            (T0 + timedelta(hours=hour), row.message_id),
        )
    db.commit()


def listed(client, **query):
    response = client.get("/messages", query_string=query, headers=AUTH)
    assert response.status_code == 200, response.json
    return response.json


def ids(page):
    return [m["message_id"] for m in page["messages"]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, ["A1", "A2", "B1", "A3", "B2", "A4"]),
        ({"provider": "greenapi"}, ["B1", "B2"]),
        ({"status": "failed"}, ["A2", "B2"]),
        ({"instance_id": "inst-b"}, ["B1", "A3"]),
        ({"phone": "+55 (11) 98888-7777"}, ["A2", "B2"]),
        ({"since": "2026-11-29T11:00:00+00:00"}, ["B1", "A3", "B2", "A4"]),
        ({"until": "2026-11-29T11:00:00+00:00"}, ["A1", "A2"]),
        (
            {"status": "failed", "since": "2026-11-29T10:00:00+00:00", "provider": "zapi"},
            ["A2"],
        ),
    ],
)
def test_filters(client, db, query, expected):
    seed(db)
    page = listed(client, **query)
    assert ids(page) == expected
    assert page["next"] is None


def test_a_listed_message_has_its_status_and_times(client, db):
    seed(db)
    [message] = listed(client, provider="greenapi", status="read")["messages"]
    assert message["status"] == "read" and message["read_at"] == T0.isoformat()
    assert message["created_at"] == (T0 + timedelta(hours=2)).isoformat()
    assert "events" not in message


@pytest.mark.parametrize("provider", [None, "zapi"])
def test_pages_are_stable_while_messages_are_written(client, db, provider):
    seed(db)
    query = {"provider": provider} if provider else {}
    first = listed(client, limit=2, **query)
    # meanwhile: new messages, and updates to listed and unlisted ones
    store.apply_events(db, [event("NEW1", "sent"), event("A1", "read"), event("A4", "played")])
    db.commit()
    pages, cursor = [first], first["next"]
    while cursor:
        pages.append(listed(client, limit=2, cursor=cursor, **query))
        cursor = pages[-1]["next"]
    seen = [message_id for page in pages for message_id in ids(page)]
    expected = [m for m in ["A1", "A2", "B1", "A3", "B2", "A4"] if provider is None or m[0] == "A"]
    assert seen == [*expected, "NEW1"]  # each once, in order; the new one after them


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"provider": "nosuch"}, "provider"),
        ({"status": "delivered"}, "status"),
        ({"since": "2026-11-29"}, "since"),
        ({"since": "2026-11-29T10:00:00"}, "since"),  # no offset: which day is that?
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_a_bad_query_is_a_400_naming_the_field(client, db, query, field):
    response = client.get("/messages", query_string=query, headers=AUTH)
    assert response.status_code == 400
    assert field in response.json["errors"]


def test_the_list_needs_the_api_token(client):
    assert client.get("/messages").status_code == 401


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({}, "messages_created"),
        ({"since": T0}, "messages_created"),
        ({"status": "failed", "since": T0}, "messages_created"),
        ({"provider": "zapi"}, "messages_created"),
        ({"instance_id": "inst-a", "since": T0}, "messages_created"),
        ({"phone": "5544999999999", "until": T0}, "messages_created"),
    ],
)
def test_every_list_is_read_in_order_along_its_index(db, filters, index):
    """Read from the plan, in order and without a sort (other plans off: on a table this
    small the planner would rather read it all and sort). One index in the list's order
    serves every filter: more cost the workers half their drain rate (docs/benchmarks.md)."""
    seed(db)
    for method in ("seqscan", "bitmapscan", "sort"):
        db.execute(f"SET enable_{method} = off")
    for keyset in (None, (T0, "zapi", "A1")):
        query, params = store.message_list_query(filters, keyset, 10)
        plan = "\n".join(row[0] for row in db.execute(sql.SQL("EXPLAIN ") + query, params))
        assert f"Index Scan using {index}" in plan, plan
        assert "Sort" not in plan, plan


def test_export_writes_the_filtered_messages_as_csv(app, db, tmp_path):
    seed(db)
    out = tmp_path / "failed.csv"
    result = app.test_cli_runner().invoke(
        args=["export", "--status", "failed", "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [(r["provider"], r["message_id"], r["status"]) for r in rows] == [
        ("zapi", "A2", "failed"),
        ("greenapi", "B2", "failed"),
    ]
    assert rows[0]["created_at"] == (T0 + timedelta(hours=1)).isoformat()
    assert "exported 2 messages" in result.output


def test_export_refuses_a_bad_filter_naming_it(app, db):
    result = app.test_cli_runner().invoke(args=["export", "--status", "delivered"])
    assert result.exit_code != 0
    assert "status" in result.output


@pytest.mark.parametrize("path", ["/messages", "/messages/zapi/M1", "/changes"])
def test_the_read_api_without_its_database_is_a_503_to_retry(redis_url, path):
    client = make_app(f"postgresql://127.0.0.1:{free_port()}/nowhere", redis_url).test_client()
    response = client.get(path, headers=AUTH)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json == {"error": "database unavailable"}
