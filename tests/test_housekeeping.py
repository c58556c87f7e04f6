"""Housekeeping (workers/lifecycle/housekeeping.py) on real PostgreSQL: the history's daily
partitions created ahead and dropped after retention, on a clock moved days ahead; retention of
every other table in batches that never wait for a worker's locks; and a real worker doing it."""

from __future__ import annotations

import re
import threading
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from schemas.events import StatusEvent
from tests.conftest import event_now, wait_for
from workers.core import store
from workers.core.store import Outcome
from workers.lifecycle import housekeeping
from workers.lifecycle.housekeeping import Retention, ensure_partitions, partitions
from workers.outbound import subscriptions

SHORT = Retention(history_days=2, message_days=4, partitions_ahead=3, batch_size=2)


def event(message_id: str, status: str):
    return event_now(message_id, status, phone="5511987654321")


def apply(db: psycopg.Connection, *events: StatusEvent):
    with db.transaction():
        return store.apply_events(db, list(events))


def today() -> datetime:
    now = datetime.now(UTC)
    return datetime(now.year, now.month, now.day, tzinfo=UTC)


def days_partitioned(db: psycopg.Connection) -> set:
    return {day for day, _name, _pending in partitions(db)}


@pytest.fixture
def clock(db: psycopg.Connection, database_url: str):
    """Runs housekeeping at a time moved ahead; afterwards the partitions around the real
    today are there again (the migration's: 3 days back, 7 ahead) for the other tests."""

    def run_at(moved: timedelta, settings: Retention = SHORT):
        return housekeeping.run(database_url, settings, now=datetime.now(UTC) + moved)

    yield run_at
    first = today().date() - timedelta(days=3)
    ensure_partitions(db, first, today().date() + timedelta(days=7))


def test_partitions_are_made_ahead_and_old_days_dropped_as_the_days_go_by(db, clock):
    start = today()
    # History on each of the last days (written there as the workers would have).
    for back in range(3):
        created = start - timedelta(days=back) + timedelta(hours=1)
        db.execute(
            "INSERT INTO status_events (provider, message_id, status, raw_status, occurred_at,"
            " received_at, applied, created_at) VALUES ('zapi', %s, 'sent', 'SENT', %s, %s,"
            " true, %s)",
            (f"D{back}", created, created, created),
        )
    dropped = []
    for ahead in range(6):
        report = clock(timedelta(days=ahead))
        assert report is not None
        dropped += report.dropped
        now = start + timedelta(days=ahead)
        held = days_partitioned(db)
        # Every day from now to PARTITION_DAYS_AHEAD ahead has its partition...
        for n in range(SHORT.partitions_ahead + 1):
            assert (now + timedelta(days=n)).date() in held
        # ...and no day wholly older than HISTORY_RETENTION_DAYS is kept.
        assert min(held) >= (now - timedelta(days=SHORT.history_days)).date()
        kept = {row[0] for row in db.execute("SELECT message_id FROM status_events")}
        assert kept == {
            f"D{back}"
            for back in range(3)
            if (start - timedelta(days=back - 1)) > now - timedelta(days=SHORT.history_days)
        }
    assert {f"status_events_{start - timedelta(days=back):%Y%m%d}" for back in range(3)} <= set(
        dropped
    )
    assert not db.execute("SELECT 1 FROM status_events").fetchall()


def test_the_rules_hold_for_a_message_whose_history_was_dropped(db, clock):
    """The dedupe lives on the message row: a repeat of an event whose history row went with
    its day is still a repeat, and the message still never moves backwards."""
    assert apply(db, event("H1", "sent"), event("H1", "read"))[Outcome.APPLIED] == 2
    clock(timedelta(days=SHORT.history_days + 1))  # today's history dropped; messages kept
    assert db.execute("SELECT count(*) FROM status_events").fetchone() == (0,)
    ensure_partitions(db, today().date(), today().date())  # the real today, for new events
    assert apply(db, event("H1", "read")) == {Outcome.DUPLICATE: 1}
    assert apply(db, event("H1", "received")) == {Outcome.REFUSED: 1}
    assert store.fetch_message(db, "zapi", "H1")["status"] == "read"


def test_every_table_keeps_its_rows_only_as_long_as_its_retention(db, clock):
    now = datetime.now(UTC)
    apply(db, event("OLD-1", "sent"), event("OLD-2", "sent"), event("OLD-3", "sent"))
    apply(db, event("NEW-1", "sent"))
    db.execute(
        "UPDATE messages SET created_at = %s, updated_at = %s WHERE message_id LIKE 'OLD-%%'",
        (now - timedelta(days=200), now - timedelta(days=190)),
    )
    # A message created long ago but updated since is kept.
    db.execute(
        "UPDATE messages SET created_at = %s WHERE message_id = 'NEW-1'",
        (now - timedelta(days=300),),
    )
    quarantine = [
        ("pending-old", now - timedelta(days=31), None),
        ("pending-new", now - timedelta(days=29), None),
        ("replayed-old", now - timedelta(days=20), now - timedelta(days=8)),
        ("replayed-new", now - timedelta(days=20), now - timedelta(days=6)),
    ]
    for request_id, received, replayed in quarantine:
        db.execute(
            "INSERT INTO quarantine (request_id, provider, reason, errors, raw_body,"
            " received_at, replayed_at) VALUES (%s, 'zapi', 'invalid', '{}', '{}', %s, %s)",
            (request_id, received, replayed),
        )
    for task_id, created, replayed, discarded in [
        ("dl-old", now - timedelta(days=31), None, None),
        ("dl-new", now - timedelta(days=29), None, None),
        ("dl-replayed", now - timedelta(days=9), now - timedelta(days=8), None),
        # Discarded: resolved, as a replay is (7 days from the discard).
        ("dl-discarded-old", now - timedelta(days=20), None, now - timedelta(days=8)),
        ("dl-discarded-new", now - timedelta(days=20), None, now - timedelta(days=6)),
    ]:
        db.execute(
            "INSERT INTO dead_letters (task_id, task_name, payload, error, deliveries,"
            " created_at, replayed_at, discarded_at)"
            " VALUES (%s, 'ticks.apply_events', '[]', 'x', 1, %s, %s, %s)",
            (task_id, created, replayed, discarded),
        )
    db.execute("UPDATE changes SET created_at = %s", (now - timedelta(days=8),))
    sub, _ = subscriptions.create(db, "https://example.com/hook", None, None, 1)
    # The subscription has read the first two changes only: the rest wait for it.
    first_two = db.execute("SELECT txid, id FROM changes ORDER BY id LIMIT 2").fetchall()
    db.execute(
        "UPDATE subscriptions SET cursor_txid = %s, cursor_id = %s WHERE id = %s",
        (*first_two[-1], sub),
    )
    for delivered, dead in [
        (now - timedelta(days=8), None),
        (now - timedelta(days=6), None),
        (None, now - timedelta(days=31)),
        (None, None),
    ]:
        db.execute(
            "INSERT INTO deliveries (subscription_id, lane, body, change_count, first_change_at,"
            " expires_at, delivered_at, dead_at) VALUES (%s, 0, '{}', 1, now(), now(), %s, %s)",
            (sub, delivered, dead),
        )
    # Instances' connection reports: as long as the history (90 days), the instance's latest
    # state kept whatever its age.
    for n, age in enumerate((91, 92, 93, 89)):
        db.execute(
            "INSERT INTO instance_events (provider, instance_id, state, raw_state,"
            " occurred_at, received_at, created_at) VALUES ('waha', 'shop', 'connected',"
            " %s, %s, %s, %s)",
            (f"WORKING {n}", now - timedelta(days=age), now, now - timedelta(days=age)),
        )
    db.execute(
        "INSERT INTO instances (provider, instance_id, state, raw_state, reported_at,"
        " received_at, since) VALUES ('waha', 'old-shop', 'banned', 'blocked', %s, %s, %s)",
        (now - timedelta(days=400),) * 3,
    )

    report = clock(timedelta(0), Retention(batch_size=2))

    assert report.removed["instance_events"] == 3
    assert db.execute("SELECT raw_state FROM instance_events").fetchall() == [("WORKING 3",)]
    assert db.execute("SELECT count(*) FROM instances").fetchone() == (1,)
    assert report.removed["messages"] == 3
    assert [r[0] for r in db.execute("SELECT message_id FROM messages")] == ["NEW-1"]
    assert {r[0] for r in db.execute("SELECT request_id FROM quarantine")} == {
        "pending-new",
        "replayed-new",
    }
    assert {r[0] for r in db.execute("SELECT task_id FROM dead_letters")} == {
        "dl-new",
        "dl-discarded-new",
    }
    assert report.removed["changes"] == 2
    assert db.execute("SELECT count(*) FROM changes").fetchone() == (2,)
    assert report.removed["deliveries"] == 2
    assert db.execute(
        "SELECT count(*) FROM deliveries WHERE delivered_at IS NULL AND dead_at IS NULL"
    ).fetchone() == (1,)


def test_retention_never_waits_for_a_row_a_worker_holds(db, database_url, clock):
    apply(db, event("HELD", "sent"), event("FREE", "sent"))
    long_ago = datetime.now(UTC) - timedelta(days=400)
    db.execute("UPDATE messages SET created_at = %s, updated_at = %s", (long_ago, long_ago))
    worker = psycopg.connect(database_url)
    try:
        worker.execute("SELECT 1 FROM messages WHERE message_id = 'HELD' FOR UPDATE")
        done = threading.Event()
        result = {}

        def run():
            result["report"] = clock(timedelta(0), Retention())
            done.set()

        threading.Thread(target=run, daemon=True).start()
        assert done.wait(30), "retention waited for the worker's lock"
        assert result["report"].removed["messages"] == 1
        assert [r[0] for r in db.execute("SELECT message_id FROM messages")] == ["HELD"]
    finally:
        worker.rollback()
        worker.close()
    assert clock(timedelta(0), Retention()).removed["messages"] == 1


def test_one_housekeeper_at_a_time(db, database_url, clock):
    with psycopg.connect(database_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (housekeeping.ADVISORY_LOCK_ID,))
        assert clock(timedelta(0)) is None
    assert clock(timedelta(0)) is not None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HISTORY_RETENTION_DAYS": "0"}, "HISTORY_RETENTION_DAYS must be a whole number"),
        ({"CHANGES_RETENTION_DAYS": "1.5"}, "CHANGES_RETENTION_DAYS must be a whole number"),
        (
            {"PARTITION_DAYS_AHEAD": "1"},
            "PARTITION_DAYS_AHEAD must be a whole number of days from 2",
        ),
        ({"RETENTION_BATCH_SIZE": "many"}, "RETENTION_BATCH_SIZE must be a whole number of rows"),
        (
            {"HISTORY_RETENTION_DAYS": "200", "MESSAGE_RETENTION_DAYS": "100"},
            r"MESSAGE_RETENTION_DAYS \(100\) must be more than HISTORY_RETENTION_DAYS \(200\)",
        ),
        (
            {"HISTORY_RETENTION_DAYS": "30", "MESSAGE_RETENTION_DAYS": "30"},
            r"MESSAGE_RETENTION_DAYS \(30\) must be more than HISTORY_RETENTION_DAYS \(30\)",
        ),
    ],
)
def test_a_bad_retention_setting_stops_the_start_naming_it(env, message):
    with pytest.raises(RuntimeError, match=message):
        Retention.from_env(env)


def test_the_defaults():
    settings = Retention.from_env({})
    assert (settings.history_days, settings.message_days, settings.partitions_ahead) == (90, 180, 7)


def test_a_worker_makes_the_partitions_ahead_when_it_starts(db, start_worker):
    """A worker that was down for days finds its partitions: it makes them at start."""
    ahead = [today().date() + timedelta(days=n) for n in range(1, 8)]
    for day in ahead:
        db.execute(f"ALTER TABLE status_events DETACH PARTITION status_events_{day:%Y%m%d}")
        db.execute(f"DROP TABLE status_events_{day:%Y%m%d}")
    assert not set(ahead) & days_partitioned(db)
    start_worker()
    wait_for(lambda: set(ahead) <= days_partitioned(db), timeout=30)


def test_metrics_show_what_is_kept_and_the_partitions_ahead(db, client):
    from tests.conftest import API_TOKEN

    apply(db, event("MX", "sent"))
    db.execute("UPDATE messages SET created_at = now() - interval '2 days'")
    text = client.get("/metrics", headers={"Authorization": f"Bearer {API_TOKEN}"}).text
    ahead = float(re.search(r"^ticks_history_partitions_ahead_seconds (\S+)$", text, re.M)[1])
    assert ahead > 7 * 86400  # the migration's, then housekeeping's PARTITION_DAYS_AHEAD
    age = re.search(r'^ticks_retention_oldest_seconds\{table="messages"\} (\S+)$', text, re.M)
    assert 2 * 86400 - 60 < float(age[1]) < 2 * 86400 + 60
    assert re.search(r'^ticks_retention_oldest_seconds\{table="status_events"\} ', text, re.M)


def test_a_feed_reader_behind_what_retention_removed_is_told_so(db, client, clock):
    from tests.conftest import API_TOKEN

    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    apply(db, event("F1", "sent"), event("F2", "sent"))
    first = client.get("/changes?after=0&limit=1", headers=auth).get_json()
    before_all = "1-0"  # a cursor from before every change
    db.execute("UPDATE changes SET created_at = now() - interval '30 days'")
    apply(db, event("F3", "sent"))  # recent: kept
    assert clock(timedelta(0), Retention()).removed["changes"] == 2

    expired = client.get(f"/changes?after={first['next']}", headers=auth)
    assert expired.status_code == 410 and "after" in expired.get_json()["errors"]
    assert client.get(f"/changes?after={before_all}", headers=auth).status_code == 410
    # From the start: what is kept; from a cursor past what went: as ever.
    kept = client.get("/changes?after=0", headers=auth).get_json()
    assert [c["message_id"] for c in kept["changes"]] == ["F3"]
    assert client.get(f"/changes?after={kept['next']}", headers=auth).status_code == 200


def test_a_day_a_long_transaction_still_reads_is_dropped_by_a_later_run(db, database_url, clock):
    """DETACH ... CONCURRENTLY waits for transactions that may read the partition; housekeeping
    gives up after its lock timeout (the day is left "detach pending", and PostgreSQL allows
    one such at a time), goes on with retention, and the next run finishes it first, then the
    other days due, and drops a day table a failed DROP left detached."""
    first, second = (today().date() - timedelta(days=n) for n in (3, 2))
    orphan = "status_events_20200101"
    db.execute(f"CREATE TABLE {orphan} (LIKE status_events)")  # detached, never dropped
    with psycopg.connect(database_url) as reader:
        reader.execute(f"SELECT count(*) FROM status_events_{first:%Y%m%d}")  # held to its end
        report = clock(timedelta(0), Retention(history_days=1))
        assert f"status_events_{first:%Y%m%d}" not in report.dropped
        assert report.removed["messages"] == 0  # the run went on to retention
    dropped = report.dropped + clock(timedelta(0), Retention(history_days=1)).dropped
    assert {orphan, f"status_events_{first:%Y%m%d}", f"status_events_{second:%Y%m%d}"} <= set(
        dropped
    )
    assert not {first, second} & days_partitioned(db)
    assert db.execute("SELECT to_regclass(%s)", (orphan,)).fetchone() == (None,)


def test_days_are_utc_days_whatever_the_session_time_zone(db):
    """Around a daylight-saving change in the session's zone, partitions still meet exactly at
    midnight UTC: no gap, no overlap."""
    db.execute("SET TIME ZONE 'America/New_York'")
    try:
        days = [date(2025, 3, 8) + timedelta(days=n) for n in range(3)]  # spring forward 9 March
        days += [date(2025, 11, 1) + timedelta(days=n) for n in range(3)]  # fall back 2 November
        ensure_partitions(db, days[0], days[2])
        ensure_partitions(db, days[3], days[5])
        bounds = dict(
            db.execute(
                "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
                " JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'status_events'::regclass AND c.relname LIKE '%%2025%%'"
            ).fetchall()
        )
        db.execute("SET TIME ZONE 'UTC'")
        for day in days:
            expression = bounds[f"status_events_{day:%Y%m%d}"]
            low, high = re.findall(r"'([^']+)'", expression)
            assert db.execute(
                "SELECT %s::timestamptz = %s::date::timestamp AT TIME ZONE 'UTC'"
                " AND %s::timestamptz = (%s::date + 1)::timestamp AT TIME ZONE 'UTC'",
                (low, day, high, day),
            ).fetchone() == (True,), (day, expression)
    finally:
        db.execute("SET TIME ZONE 'UTC'")
        for day, name, _pending in partitions(db):
            if day.year == 2025:
                db.execute(f"ALTER TABLE status_events DETACH PARTITION {name}")
                db.execute(f"DROP TABLE {name}")


def test_the_feed_goes_in_its_own_order_so_no_kept_change_is_behind_the_horizon(db, client, clock):
    """A transaction's changes can be written after a later transaction's (a smaller txid, a
    larger id): retention removes the feed as a prefix in (txid, id) order, never leaving a
    kept change behind what it removed (whose reader would be told 410 for nothing)."""
    from tests.conftest import API_TOKEN

    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    for txid, message_id, age in [(50, "OLD", "30 days"), (40, "LATE", "0"), (60, "NEW", "0")]:
        db.execute(
            "INSERT INTO changes (txid, provider, message_id, status, occurred_at, created_at)"
            " VALUES (%s::xid8, 'zapi', %s, 'sent', now(), now() - %s::interval)",
            (str(txid), message_id, age),
        )
    assert clock(timedelta(0), Retention()).removed["changes"] == 2
    assert [r[0] for r in db.execute("SELECT message_id FROM changes")] == ["NEW"]
    page = client.get("/changes?after=0&limit=1", headers=auth).get_json()
    assert [c["message_id"] for c in page["changes"]] == ["NEW"]
    assert client.get(f"/changes?after={page['next']}", headers=auth).status_code == 200


def test_the_feed_is_kept_for_the_slowest_subscription_whatever_the_ids_digits(db, clock):
    """Cursors and keys compare as transaction ids (numbers), never as their text: a
    subscription at txid 9 keeps 10 and 11, though "100" (another one's) sorts before "9"."""
    slow, _ = subscriptions.create(db, "https://example.com/slow", None, None, 1)
    fast, _ = subscriptions.create(db, "https://example.com/fast", None, None, 1)
    ids = {}
    for txid in (8, 9, 10, 11):
        ids[txid] = db.execute(
            "INSERT INTO changes (txid, provider, message_id, status, occurred_at, created_at)"
            " VALUES (%s::xid8, 'zapi', %s, 'sent', now(), now() - interval '30 days')"
            " RETURNING id",
            (str(txid), f"T{txid}"),
        ).fetchone()[0]
    for sub, txid, change_id in ((slow, 9, ids[9]), (fast, 100, 0)):
        db.execute(
            "UPDATE subscriptions SET cursor_txid = %s::xid8, cursor_id = %s WHERE id = %s",
            (str(txid), change_id, sub),
        )
    assert clock(timedelta(0), Retention()).removed["changes"] == 2
    kept = [r[0] for r in db.execute("SELECT message_id FROM changes ORDER BY id")]
    assert kept == ["T10", "T11"]


def test_an_expired_feed_goes_whole_whatever_the_ids_digits(db, clock):
    for txid in (8, 9, 10, 11):
        db.execute(
            "INSERT INTO changes (txid, provider, message_id, status, occurred_at, created_at)"
            " VALUES (%s::xid8, 'zapi', %s, 'sent', now(), now() - interval '30 days')",
            (str(txid), f"T{txid}"),
        )
    assert clock(timedelta(0), Retention()).removed["changes"] == 4
