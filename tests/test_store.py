"""The store on a real Postgres: rules, dedupe, history, atomic batches, concurrency."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from schemas.events import StatusEvent
from schemas.statuses import EVENT_STATUSES, STATUSES, is_applied, next_status
from workers.core import store
from workers.core.migrate import migrate
from workers.core.store import Outcome

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
OFFSET = {
    "sent": 0,
    "received": 1,
    "read": 2,
    "played": 3,
    "failed": 4,
    "read_by_me": 5,
    "pending": 6,
}


def event(status: str, message_id: str = "M1", provider: str = "zapi", **fields) -> StatusEvent:
    values = {
        "provider": provider,
        "message_id": message_id,
        "status": status,
        "raw_status": status.upper(),
        "occurred_at": T0 + timedelta(seconds=OFFSET[status]),
        "received_at": T0 + timedelta(minutes=1),
        "phone": "5511987654321",
        "failure_reason": "noAccount" if status == "failed" else None,
    }
    values.update(fields)
    return StatusEvent(**values)


def apply(conn: psycopg.Connection, *events: StatusEvent):
    with conn.transaction():
        return store.apply_events(conn, list(events))


def message(conn, message_id="M1", provider="zapi"):
    return store.fetch_message(conn, provider, message_id)


def history(conn, message_id="M1"):
    return conn.execute(
        "SELECT status, applied FROM status_events WHERE message_id = %s ORDER BY id",
        (message_id,),
    ).fetchall()


PAIRS = [(a, b) for a in EVENT_STATUSES for b in EVENT_STATUSES if a != b]


@pytest.mark.parametrize("pair", PAIRS, ids=[f"{a}-then-{b}" for a, b in PAIRS])
def test_every_pair_of_events_in_postgres_follows_the_rule_table(db, pair):
    first, second = pair
    apply(db, event(first))
    apply(db, event(second))
    after_first = next_status(None, first)
    assert message(db)["status"] == next_status(after_first, second)
    assert history(db) == [
        (first, is_applied(None, first)),
        (second, is_applied(after_first, second)),
    ]


def test_sql_rule_agrees_with_python_on_every_pair(db):
    for current in (None, *STATUSES):
        for incoming in EVENT_STATUSES:
            assert store.sql_next_status(db, current, incoming) == next_status(current, incoming), (
                current,
                incoming,
            )


def test_duplicate_sent_is_recorded_once(db):
    assert apply(db, event("sent")) == {Outcome.APPLIED: 1}
    assert apply(db, event("sent", raw_status="SENT", request_id="again")) == {Outcome.DUPLICATE: 1}
    assert history(db) == [("sent", True)]


def test_duplicate_in_one_batch_is_recorded_once(db):
    outcomes = apply(db, event("read"), event("read"), event("sent"))
    assert outcomes == {Outcome.APPLIED: 2, Outcome.DUPLICATE: 1}
    assert len(history(db)) == 2


def test_read_then_received_keeps_read_and_fills_received_at(db):
    apply(db, event("read"))
    assert apply(db, event("received")) == {Outcome.REFUSED: 1}
    row = message(db)
    assert row["status"] == "read"
    assert row["received_at"] == T0 + timedelta(seconds=1)
    assert row["read_at"] == T0 + timedelta(seconds=2)
    assert history(db) == [("read", True), ("received", False)]


def test_failed_after_read_is_kept_in_history_and_changes_nothing(db):
    apply(db, event("sent"), event("read"))
    apply(db, event("failed", failure_reason="failed: boom"))
    row = message(db)
    assert (row["status"], row["failed_at"], row["failure_reason"]) == ("read", None, None)
    assert ("failed", False) in history(db)


def test_sent_after_failed_stays_failed(db):
    apply(db, event("failed", failure_reason="noAccount: no WhatsApp"))
    apply(db, event("sent"))
    row = message(db)
    assert row["status"] == "failed"
    assert row["failure_reason"] == "noAccount: no WhatsApp"
    assert row["failed_at"] == T0 + timedelta(seconds=4)
    assert row["sent_at"] == T0
    assert history(db) == [("failed", True), ("sent", False)]


def test_read_by_me_sets_its_time_and_never_the_status(db):
    apply(db, event("sent"), event("read_by_me"))
    row = message(db)
    assert row["status"] == "sent"
    assert row["read_by_me_at"] == T0 + timedelta(seconds=5)
    assert row["read_at"] is None


def test_read_by_me_alone_creates_a_message_without_status(db):
    apply(db, event("read_by_me"))
    assert message(db)["status"] is None


def test_forward_jump_from_nothing_to_played(db):
    apply(db, event("played"))
    row = message(db)
    assert (row["status"], row["played_at"], row["sent_at"]) == (
        "played",
        T0 + timedelta(seconds=3),
        None,
    )


def test_identity_fields_are_kept_from_the_first_event_that_has_them(db):
    apply(db, event("sent", phone=None, instance_id=None))
    apply(
        db,
        event(
            "received", phone="5511000000000", instance_id="inst", chat_id="c@c.us", is_group=False
        ),
    )
    apply(db, event("read", phone="5599999999999", instance_id="other"))
    row = message(db)
    assert (row["phone"], row["instance_id"], row["chat_id"], row["is_group"]) == (
        "5511000000000",
        "inst",
        "c@c.us",
        False,
    )


def test_same_message_id_of_two_providers_are_two_messages(db):
    apply(db, event("read", provider="zapi"), event("sent", provider="plug"))
    assert message(db, provider="zapi")["status"] == "read"
    assert message(db, provider="plug")["status"] == "sent"


def test_events_are_listed_oldest_first(db):
    apply(db, event("read"))
    apply(db, event("sent"))
    assert [e["status"] for e in message(db)["events"]] == ["sent", "read"]


def test_a_batch_is_one_transaction(db):
    too_long_status = event("sent", message_id="M2", raw_status=None)  # NOT NULL violation
    with pytest.raises(psycopg.errors.NotNullViolation):
        apply(db, event("sent"), too_long_status)
    assert message(db) is None
    assert db.execute("SELECT count(*) FROM status_events").fetchone() == (0,)


def test_quarantine_is_stored_once_per_request(db):
    record = {
        "request_id": "r1",
        "provider": "zapi",
        "reason": "validation",
        "errors": {"ids": ["Missing data for required field."]},
        "raw_body": '{"a": 1}',
        "content_type": "application/json",
        "received_at": T0,
    }
    with db.transaction():
        assert store.record_quarantine(db, record)
    with db.transaction():
        assert not store.record_quarantine(db, record)
    rows = db.execute("SELECT provider, errors, raw_body FROM quarantine").fetchall()
    assert rows == [("zapi", {"ids": ["Missing data for required field."]}, '{"a": 1}')]


def test_migrations_apply_once(database_url):
    assert migrate(database_url) == []


def run_concurrently(
    database_url: str, batches: list[list[StatusEvent]], per_event: bool = False
) -> None:
    """Apply each batch in its own connection, all released at the same moment.

    With ``per_event`` every event is its own transaction: the most interleaving.
    """
    barrier = threading.Barrier(len(batches))
    errors: list[BaseException] = []

    def work(batch):
        try:
            with psycopg.connect(database_url) as conn:
                barrier.wait()
                for chunk in [[e] for e in batch] if per_event else [batch]:
                    with conn.transaction():
                        store.apply_events(conn, chunk)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors


@pytest.mark.parametrize("seed", range(5))
def test_concurrent_shuffled_duplicated_batches_end_in_the_rule_table_state(db, database_url, seed):
    rng = random.Random(seed)
    statuses = ["sent", "received", "read", "read_by_me", "failed", "played"]
    ids = [f"C{i}" for i in range(8)]
    per_message = {mid: rng.sample(statuses, rng.randint(1, len(statuses))) for mid in ids}
    pool = [event(s, mid) for mid, chosen in per_message.items() for s in chosen] * 3
    rng.shuffle(pool)
    run_concurrently(database_url, [pool[i::4] for i in range(4)])
    for mid, chosen in per_message.items():
        rows = history(db, mid)
        assert sorted(s for s, _ in rows) == sorted(chosen)
        assert_history_replays_to(message(db, mid)["status"], rows)


def assert_history_replays_to(final: str | None, rows: list[tuple[str, bool]]) -> None:
    """Replaying the history in the order it was written gives every flag and the status.

    Rows are written under the message's lock, so their id order is the order the events
    were applied in; any interleaving that broke that would show here.
    """
    state = None
    for status, applied in rows:
        assert applied == is_applied(state, status), (rows, status)
        state = next_status(state, status)
    assert final == state, rows


@pytest.mark.parametrize("seed", range(3))
def test_one_event_per_transaction_races_keep_history_consistent(db, database_url, seed):
    rng = random.Random(seed)
    ids = [f"H{i}" for i in range(3)]
    pool = [event(s, mid) for mid in ids for s in EVENT_STATUSES] * 4
    rng.shuffle(pool)
    run_concurrently(database_url, [pool[i::4] for i in range(4)], per_event=True)
    for mid in ids:
        rows = history(db, mid)
        assert len(rows) == len(EVENT_STATUSES)
        assert_history_replays_to(message(db, mid)["status"], rows)


def test_without_failed_any_order_ends_at_the_furthest_status(db, database_url):
    events = [event(s, "R1") for s in ("sent", "received", "read", "played", "read_by_me")] * 4
    random.Random(1).shuffle(events)
    run_concurrently(database_url, [events[i::4] for i in range(4)])
    row = message(db, "R1")
    assert row["status"] == "played"
    assert all(row[f"{s}_at"] for s in ("sent", "received", "read", "played", "read_by_me"))
    assert len(history(db, "R1")) == 5


def test_opposite_message_orders_do_not_deadlock(db, database_url):
    forward = [event("sent", f"D{i}") for i in range(50)]
    run_concurrently(database_url, [forward, list(reversed(forward))] * 2)
    assert db.execute("SELECT count(*) FROM messages").fetchone() == (50,)
    assert db.execute("SELECT count(*) FROM status_events").fetchone() == (50,)


def test_the_pool_follows_the_database_asked_for(database_url, postgres_url):
    """A process asked for another database gets a pool on it, not the first one's."""
    from psycopg.conninfo import conninfo_to_dict

    from workers.core.db import close_pool, get_pool

    first = get_pool(database_url)
    assert get_pool(database_url) is first
    other = get_pool(postgres_url)
    assert other.conninfo == postgres_url and first.closed
    with other.connection() as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]
    assert name == conninfo_to_dict(postgres_url).get("dbname", "postgres")
    close_pool()


def test_the_message_lock_is_held_even_when_nothing_about_the_message_changes(db, database_url):
    """The dedupe reads the message row's seen statuses under its lock, so LOCK_MESSAGE must
    lock a row it has nothing to fill (it does not rewrite it): another transaction cannot
    take that row until this one ends."""
    apply(db, event("sent"))  # the message exists, every identity field it will get filled
    identity = store.merged_identity([event("read")])
    with psycopg.connect(database_url) as first, psycopg.connect(database_url) as second:
        first.execute(store.LOCK_MESSAGE, identity)
        with pytest.raises(psycopg.errors.LockNotAvailable):
            second.execute(
                "SELECT 1 FROM messages WHERE provider = 'zapi' AND message_id = 'M1'"
                " FOR UPDATE NOWAIT"
            )
        first.rollback()
    [(xmin_before,)] = db.execute("SELECT xmin::text FROM messages").fetchall()
    with db.transaction():
        db.execute(store.LOCK_MESSAGE, identity)
    assert db.execute("SELECT xmin::text FROM messages").fetchall() == [(xmin_before,)]
