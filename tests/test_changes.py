"""The change feed: written with the change (a transactional outbox), read in commit order."""

from __future__ import annotations

import itertools
import random
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from schemas.events import StatusEvent
from schemas.statuses import EVENT_STATUSES, STATUSES, furthest, next_status
from tests.conftest import API_TOKEN
from workers.core import store

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def event(message_id, status, participant=None, minute=0, reason=None):
    return StatusEvent(
        provider="zapi",
        message_id=message_id,
        status=status,
        raw_status=status.upper(),
        occurred_at=T0 + timedelta(minutes=minute),
        received_at=T0 + timedelta(minutes=minute),
        chat_id="120363019502650977-group" if participant else "5544999999999",
        chat_kind="group" if participant else "user",
        is_group=bool(participant),
        phone=None if participant else "5544999999999",
        instance_id="inst",
        participant=participant,
        failure_reason=reason,
    )


def feed(client, after="0", **params):
    response = client.get("/changes", query_string={"after": after, **params}, headers=AUTH)
    assert response.status_code == 200, response.json
    return response.json


def test_what_took_effect_is_in_the_feed_with_its_message(client, db):
    store.apply_events(db, [event("M1", "sent"), event("M1", "read", minute=2)])
    store.apply_events(db, [event("M1", "received", minute=1)])  # late: kept, no effect
    store.apply_events(db, [event("M1", "read_by_me", minute=3), event("M1", "read", minute=2)])
    store.apply_events(db, [event("M2", "failed", reason="noAccount: no WhatsApp")])
    db.commit()
    page = feed(client)
    assert [
        (c["message_id"], c["status"], c["previous_status"], c["participant"])
        for c in page["changes"]
    ] == [
        ("M1", "sent", None, None),
        ("M1", "read", "sent", None),
        ("M1", "read_by_me", "read", None),
        ("M2", "failed", None, None),
    ]
    first = page["changes"][0]
    assert set(first) == {
        "cursor",
        "type",
        "provider",
        "message_id",
        "status",
        "previous_status",
        "participant",
        "occurred_at",
        "failure_reason",
        "chat_id",
        "instance_id",
    }
    assert (first["occurred_at"], first["chat_id"], first["instance_id"]) == (
        "2026-11-30T09:00:00+00:00",
        "5544999999999",
        "inst",
    )
    assert page["changes"][3]["failure_reason"] == "noAccount: no WhatsApp"
    assert page["next"] == page["changes"][-1]["cursor"]
    assert feed(client, page["next"]) == {"changes": [], "next": page["next"]}


def test_a_participants_receipt_is_a_change_when_it_takes_them_further(client, db):
    store.apply_events(db, [event("G1", "received", "A"), event("G1", "received", "B")])
    store.apply_events(db, [event("G1", "read", "B", 1), event("G1", "received", "B", 2)])
    store.apply_events(db, [event("G1", "failed", "A", 3)])  # A got it already: no effect
    db.commit()
    changes = [
        (c["status"], c["previous_status"], c["participant"]) for c in feed(client)["changes"]
    ]
    assert changes == [
        ("received", None, None),  # the message
        ("received", None, "A"),
        ("received", None, "B"),
        ("read", "received", None),
        ("read", "received", "B"),
    ]


def test_a_page_stops_at_limit_and_the_next_goes_on(client, db):
    store.apply_events(db, [event(f"P{n}", "sent") for n in range(5)])
    db.commit()
    first = feed(client, limit=2)
    second = feed(client, first["next"], limit=2)
    third = feed(client, second["next"], limit=2)
    ids = [c["message_id"] for page in (first, second, third) for c in page["changes"]]
    assert ids == ["P0", "P1", "P2", "P3", "P4"]


def insert_change(conn, message_id):
    conn.execute(
        "INSERT INTO changes (provider, message_id, status, occurred_at)"
        " VALUES ('zapi', %s, 'sent', now())",
        (message_id,),
    )


def test_the_feed_is_in_transaction_order_when_ids_gain_a_digit(client, db):
    """Transaction ids are numbers: 10 comes after 9, though "10" sorts before "9" as text
    (the feed once sorted its text copy: a page from before 1000 to after it skipped changes
    and the next repeated them; CI caught it where the test database crossed 999)."""
    for txid, message_id in [(9, "NINE"), (10, "TEN"), (8, "EIGHT"), (100, "HUNDRED")]:
        db.execute(
            "INSERT INTO changes (txid, provider, message_id, status, occurred_at)"
            " VALUES (%s::xid8, 'zapi', %s, 'sent', now())",
            (str(txid), message_id),
        )
    seen, cursor = [], "0"
    for _ in range(6):
        page = client.get(f"/changes?after={cursor}&limit=1", headers=AUTH).get_json()
        seen += [change["message_id"] for change in page["changes"]]
        cursor = page["next"]
    assert seen == ["EIGHT", "NINE", "TEN", "HUNDRED"]


def test_a_transaction_that_commits_late_is_never_behind_the_cursor(client, db, database_url):
    """T1 writes first and commits last. A reader by plain `id > cursor` misses T1's change;
    the feed holds T2's back until T1 is done, then gives both."""
    t1 = psycopg.connect(database_url)
    t2 = psycopg.connect(database_url)
    try:
        insert_change(t1, "T1")  # lower id, still running
        insert_change(t2, "T2")
        t2.commit()
        [[t2_id]] = db.execute("SELECT id FROM changes WHERE message_id = 'T2'").fetchall()
        naive = [r[0] for r in db.execute("SELECT id FROM changes WHERE id > 0 ORDER BY id")]
        assert naive == [t2_id]  # a naive reader moves its cursor past T1's id here

        waiting = feed(client)
        assert waiting == {"changes": [], "next": "0"}  # T2's change waits for T1

        t1.commit()
        naive = [r[0] for r in db.execute("SELECT id FROM changes WHERE id > %s", (t2_id,))]
        assert naive == []  # ... and never sees T1's change
        after = feed(client, waiting["next"])
        assert [c["message_id"] for c in after["changes"]] == ["T1", "T2"]
    finally:
        t1.close()
        t2.close()


def test_a_rolled_back_change_never_appears(client, db, database_url):
    with psycopg.connect(database_url) as conn:
        insert_change(conn, "GONE")
        conn.rollback()
    insert_change(db, "KEPT")
    db.commit()
    assert [c["message_id"] for c in feed(client)["changes"]] == ["KEPT"]


def test_long_poll_returns_as_soon_as_a_change_commits(client, db):
    def later():
        time.sleep(0.5)
        store.apply_events(db, [event("LP", "sent")])
        db.commit()

    threading.Thread(target=later).start()
    started = time.monotonic()
    page = feed(client, wait=5)
    assert [c["message_id"] for c in page["changes"]] == ["LP"]
    assert 0.4 < time.monotonic() - started < 3


def test_long_poll_without_changes_answers_at_its_deadline(client, db):
    started = time.monotonic()
    assert feed(client, wait=0.6)["changes"] == []
    assert 0.5 < time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"after": "12"}, "after"),
        ({"after": "x-1"}, "after"),
        ({"after": f"{2**64}-1"}, "after"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"wait": "31"}, "wait"),
        ({"wait": "nan"}, "wait"),
    ],
)
def test_a_bad_query_is_a_400_naming_the_field(client, db, query, field):
    response = client.get("/changes", query_string=query, headers=AUTH)
    assert response.status_code == 400
    assert field in response.json["errors"]


def test_the_feed_needs_the_api_token(client):
    assert client.get("/changes").status_code == 401


def test_sql_furthest_agrees_with_python(db):
    for size in range(len(STATUSES) + 1):
        for statuses in itertools.combinations(STATUSES, size):
            [[sql]] = db.execute("SELECT ticks_furthest(%s::text[])", (list(statuses),))
            assert sql == furthest(statuses), statuses


def test_every_change_and_nothing_else_is_in_the_feed(db):
    """Random batches, duplicated and out of order, over messages and group members: the feed
    holds exactly the events that moved a message (or recorded read_by_me, or a believed
    failure) and the receipts that took a member further, each once."""
    rng = random.Random(20261130)
    statuses = [s for s in EVENT_STATUSES if s != "pending"]
    for _round in range(3):
        db.execute("TRUNCATE changes, receipts, status_events, messages")
        sent = []
        for _batch in range(40):
            batch = [
                event(
                    f"R{rng.randrange(4)}",
                    rng.choice(statuses),
                    rng.choice([None, None, "A", "B"]),
                    minute=rng.randrange(10),
                )
                for _ in range(rng.randrange(1, 6))
            ]
            store.apply_events(db, batch)
            sent.append(sorted(batch, key=store.event_order))
        db.commit()
        expected = expected_changes(sent)
        got = [
            (r["message_id"], r["status"], r["previous_status"], r["participant"])
            for r in store.fetch_changes(db, (0, 0), 10_000)
        ]
        assert sorted(got, key=str) == sorted(expected, key=str)


def expected_changes(batches):
    """The changes the rules say each event makes, in the order the store applies them."""
    status, history, members, receipts, changes = {}, set(), {}, set(), []
    for batch in batches:
        for ev in batch:
            member_failure = ev.participant is not None and ev.status == "failed"
            key = (ev.message_id, ev.status)
            if not member_failure and key not in history:
                history.add(key)
                before = status.get(ev.message_id)
                after = next_status(before, ev.status)
                if ev.status == "read_by_me" or after != before:
                    changes.append((ev.message_id, ev.status, before, None))
                status[ev.message_id] = after
            if ev.participant and ev.status in STATUSES:
                rkey = (ev.message_id, ev.participant, ev.status)
                if rkey not in receipts:
                    receipts.add(rkey)
                    seen = members.setdefault((ev.message_id, ev.participant), [])
                    before = furthest(seen)
                    if furthest([*seen, ev.status]) != before:
                        changes.append((ev.message_id, ev.status, before, ev.participant))
                    seen.append(ev.status)
    return changes


def test_a_cursor_ahead_of_the_feed_is_a_409_naming_the_newest(client, db):
    """A saved cursor past anything this feed gave (its database restored from a backup, a
    cursor of another installation) once got 200 and an empty page for ever: its reader waited
    and missed every change. It is told, with the cursor to read on from."""
    store.apply_events(db, [event(f"A{n}", "sent") for n in range(2)])
    db.commit()
    page = feed(client)
    newest = page["next"]
    txid, change_id = (int(part) for part in newest.split("-"))
    for ahead in (f"{txid + 10**9}-{change_id}", f"{txid}-{change_id + 1000}", f"{txid + 10**9}-1"):
        response = client.get(f"/changes?after={ahead}&wait=5", headers=AUTH)
        assert response.status_code == 409, (ahead, response.json)
        assert response.json["newest"] == newest
        assert newest in response.json["errors"]["after"][0]
    # Where the feed is and before it, a reader goes on as ever.
    assert feed(client, newest)["changes"] == []
    assert [c["message_id"] for c in feed(client, page["changes"][0]["cursor"])["changes"]] == [
        "A1"
    ]
    store.apply_events(db, [event("A2", "sent")])
    db.commit()
    assert [c["message_id"] for c in feed(client, newest)["changes"]] == ["A2"]


def test_a_cursor_ahead_of_an_empty_feed_names_the_start(client, db):
    (next_txid,) = db.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text").fetchone()
    response = client.get(f"/changes?after={int(next_txid) + 1000}-1", headers=AUTH)
    assert response.status_code == 409
    assert response.json["newest"] == "0"
