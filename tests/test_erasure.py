"""Erasure by phone number (workers/lifecycle/erasure.py, POST /erasures, `flask erase`): afterwards
the number is in no table, in any form Ticks stores it; everyone else's data is untouched."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.conftest import API_TOKEN, event_now, free_port, make_app, wait_for
from workers.core import store
from workers.lifecycle.erasure import numbers, pattern
from workers.outbound import subscriptions

PERSON = "5511987654321"
PERSON_OLD_FORM = "551187654321"  # the same mobile before the ninth digit
OTHER = "5521912345678"
# Holds the person's digits inside a longer number: someone else, kept.
LONGER = "9" + PERSON + "7"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}

event = event_now


def traces(db: psycopg.Connection, number: str) -> dict[str, int]:
    """Rows holding ``number`` as a whole run of digits, per table: every table and column."""
    found = {}
    tables = db.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace"
        " AND relkind IN ('r', 'p') AND NOT relispartition"
    ).fetchall()
    for (table,) in tables:
        [(n,)] = db.execute(
            f'SELECT count(*) FROM "{table}" t WHERE t::text ~ %s', (pattern([number]),)
        ).fetchall()
        if n:
            found[table] = n
    return found


@pytest.fixture
def everywhere(db):
    """The person's number in every place Ticks keeps one, beside other people's data."""
    with db.transaction():
        store.apply_events(
            db,
            [
                # Their one-to-one messages: by phone, and by a chat id in the old form.
                event("M-1", phone=PERSON, chat_id=PERSON, chat_kind="user"),
                event("M-1", "read", phone=PERSON, chat_id=PERSON, chat_kind="user"),
                event("M-2", chat_id=f"{PERSON_OLD_FORM}@s.whatsapp.net", chat_kind="user"),
                # A WAHA id holds the chat.
                event(f"true_{PERSON}@c.us_3EB0AAAA", provider="waha"),
                # A group: they read it, and so did someone else.
                event("G-1", chat_id="120363000000000001@g.us", chat_kind="group", is_group=True),
                event("G-1", "read", participant=f"{PERSON}@s.whatsapp.net", is_group=True),
                event("G-1", "read", participant=f"{OTHER}@s.whatsapp.net", is_group=True),
                # A group they created (its id holds the creator's number).
                event(
                    "G-2",
                    chat_id=f"{PERSON}-1600000000",
                    chat_kind="group",
                    is_group=True,
                    failure_reason=f"could not reach {PERSON}",
                ),
                # The same person's number in its old form, on the same group and status.
                event(
                    "G-1", "read", participant=f"{PERSON_OLD_FORM}@s.whatsapp.net", is_group=True
                ),
                # A WAHA group message (the group created by them: their number in its id).
                event(
                    f"true_{PERSON}-1600000000@g.us_3EB0BBBB",
                    provider="waha",
                    chat_id=f"{PERSON}-1600000000@g.us",
                    chat_kind="group",
                    is_group=True,
                ),
                event(
                    f"true_{PERSON}-1600000000@g.us_3EB0BBBB",
                    "read",
                    provider="waha",
                    participant=f"{OTHER}@c.us",
                    is_group=True,
                ),
                # A group stored before chat kinds: no kind, no flag, an old group id.
                event("G-OLD", chat_id=f"{PERSON}-1600000000"),
                # Other people: kept as they are.
                event("O-1", phone=OTHER, chat_id=OTHER, chat_kind="user"),
                event("O-2", phone=LONGER, chat_id=LONGER, chat_kind="user"),
            ],
        )
    body = json.dumps({"phone": PERSON, "messageId": "Q-1", "status": "NOPE"})
    db.execute(
        "INSERT INTO quarantine (request_id, provider, reason, errors, raw_body, received_at)"
        " VALUES ('r1', 'zapi', 'invalid', %s, %s, now())",
        (json.dumps({"phone": [f"{PERSON} is not valid"]}), body),
    )
    db.execute(
        "INSERT INTO dead_letters (task_id, task_name, payload, error, deliveries)"
        " VALUES ('t1', 'ticks.apply_events', %s, 'boom', 5)",
        (json.dumps([{"message_id": "D-1", "phone": PERSON, "chat_id": PERSON}]),),
    )
    sub, _ = subscriptions.create(db, "https://example.com/hook", None, None, 1)
    db.execute(
        "INSERT INTO deliveries (subscription_id, lane, body, change_count, first_change_at,"
        " expires_at) VALUES (%s, 0, %s, 1, now(), now() + interval '1 day')",
        (sub, json.dumps({"message_id": "M-1", "chat_id": PERSON, "status": "read"})),
    )
    assert traces(db, PERSON).keys() >= {
        "messages",
        "receipts",
        "changes",
        "quarantine",
        "dead_letters",
        "deliveries",
        "status_events",
    }


def erased_through_the_api(client, phone: str) -> dict:
    """POST /erasures, then follow its Location until a worker has done it."""
    answer = client.post("/erasures", json={"phone": phone}, headers=AUTH)
    assert answer.status_code == 202, answer.get_json()
    assert answer.get_json()["status"] == "pending" and answer.get_json()["rows"] is None
    location = answer.headers["Location"]
    return wait_for(
        lambda: (
            (done := client.get(location, headers=AUTH).get_json())["status"] == "done" and done
        ),
        timeout=60,
    )


def test_an_erasure_leaves_no_trace_of_the_number_in_any_table(
    db, client, everywhere, start_worker
):
    start_worker()
    done = erased_through_the_api(client, "+55 (11) 98765-4321")
    rows = done["rows"]
    assert rows["removed"]["messages"] == 3 and rows["removed"]["status_events"] == 4
    assert rows["anonymised"]["messages"] == 3  # G-2, the WAHA group's, G-OLD
    assert rows["anonymised"]["receipts"] == 2  # G-1's, in each form of the number

    assert traces(db, PERSON) == {}
    assert traces(db, PERSON_OLD_FORM) == {}
    # Their own messages are gone; the groups stay, their receipt anonymised but counted.
    kept = {r[0] for r in db.execute("SELECT message_id FROM messages WHERE provider = 'zapi'")}
    assert kept == {"G-1", "G-2", "G-OLD", "O-1", "O-2"}
    group = store.fetch_message(db, "zapi", "G-1")
    assert group["status"] == "read" and group["receipts"]["counts"]["read"] == 3
    # The WAHA group message stays, its id anonymised, its member's receipt beside it.
    [(waha_id,)] = db.execute("SELECT message_id FROM messages WHERE provider = 'waha'").fetchall()
    assert waha_id.startswith("true_erased:") and waha_id.endswith("@g.us_3EB0BBBB")
    waha = store.fetch_message(db, "waha", waha_id)
    assert waha["receipts"]["counts"]["read"] == 1 and len(waha["events"]) == 2
    # Everyone else's data is untouched, a longer number holding the same digits included.
    assert store.fetch_message(db, "zapi", "O-1")["phone"] == OTHER
    assert store.fetch_message(db, "zapi", "O-2")["phone"] == LONGER
    assert traces(db, OTHER)["receipts"] == 2  # G-1's and the WAHA group's
    # The erasure is recorded: when, and how many rows; the number nowhere (checked above),
    # its task message gone from the broker with it, and the worker's log without it.
    [(erased_at, recorded)] = db.execute("SELECT erased_at, rows FROM erasures").fetchall()
    assert recorded == rows and erased_at is not None


def test_the_command_erases_and_prints_what_it_did(db, app, everywhere):
    result = app.test_cli_runner().invoke(args=["erase", "--phone", PERSON_OLD_FORM])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["status"] == "done" and shown["rows"]["removed"]["messages"] == 3
    assert traces(db, PERSON) == {} and traces(db, PERSON_OLD_FORM) == {}


def test_erasing_again_finds_nothing(db, client, everywhere, start_worker):
    worker = start_worker()
    erased_through_the_api(client, PERSON)
    again = erased_through_the_api(client, PERSON)
    assert again["rows"] == {"removed": {}, "anonymised": {}}
    assert PERSON not in worker.output() and PERSON_OLD_FORM not in worker.output()


def test_a_broker_that_does_not_take_it_is_503_and_nothing_is_recorded(db, database_url):
    dead = make_app(database_url, f"redis://127.0.0.1:{free_port()}/0").test_client()
    answer = dead.post("/erasures", json={"phone": PERSON}, headers=AUTH)
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert db.execute("SELECT count(*) FROM erasures").fetchone() == (0,)


def test_an_unknown_erasure_is_404(client):
    assert client.get("/erasures/12345", headers=AUTH).status_code == 404
    assert client.get(f"/erasures/{2**63}", headers=AUTH).status_code == 404


@pytest.mark.parametrize("body", [{}, {"phone": 5511987654321}, {"phone": "12-34"}, []])
def test_a_bad_number_is_refused_naming_the_field(client, body):
    answer = client.post("/erasures", json=body, headers=AUTH)
    assert answer.status_code == 400
    assert "phone" in answer.get_json()["errors"]


def test_the_command_refuses_a_bad_number(app):
    result = app.test_cli_runner().invoke(args=["erase", "--phone", "12-34"])
    assert result.exit_code == 2 and "--phone" in result.output


def test_erasure_needs_the_api_token(client):
    assert client.post("/erasures", json={"phone": PERSON}).status_code == 401


def test_brazilian_mobile_numbers_match_with_and_without_the_ninth_digit():
    assert numbers("+55 11 98765-4321") == [PERSON, PERSON_OLD_FORM]
    assert numbers(PERSON_OLD_FORM) == [PERSON_OLD_FORM, PERSON]
    assert numbers("+55 11 3456-7890") == ["551134567890"]  # a landline has no ninth digit
    assert numbers("+1 415 555 0100") == ["14155550100"]


def test_erased_messages_leave_the_insight_counts_and_the_health_samples(db, everywhere):
    from tests.test_insights import counted, recomputed
    from workers.lifecycle.erasure import erase

    db.execute(
        "INSERT INTO instance_health (provider, instance_id, health, since, reason, figures,"
        " checked_at) VALUES ('zapi', 'loja', 'degraded', now(), 'x',"
        """ '{"samples": ["M-1", "O-1"], "numerator": 2}', now())"""
    )
    db.execute(
        "INSERT INTO changes (kind, provider, message_id, instance_id, status, occurred_at,"
        """ figures) VALUES ('instance', 'zapi', '', 'loja', 'degraded', now(),"""
        """ '{"samples": ["M-2", "O-2"]}')"""
    )
    before = sum(counted(db).values())
    erase(db, PERSON)
    assert counted(db) == recomputed(db)  # as if their messages had never been counted
    assert sum(counted(db).values()) < before
    [(kept,)] = db.execute("SELECT figures FROM instance_health").fetchall()
    assert kept == {"samples": ["O-1"], "numerator": 2}
    [(change,)] = db.execute("SELECT figures FROM changes WHERE kind = 'instance'").fetchall()
    assert change == {"samples": ["O-2"]}
