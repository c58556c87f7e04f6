"""Delivery insights (GET /insights): each instance's funnel over the messages sent in a window,
kept as statuses are applied (workers/core/insights.py), exact under concurrent workers, and
served through the endpoint from callbacks a real worker applied."""

from __future__ import annotations

import math
import random
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from schemas.events import StatusEvent
from schemas.failures import classify
from schemas.registry import REGISTRY
from tests.brokers import ON_EACH_BROKER
from tests.conftest import API_TOKEN, load_fixture, signed_post, wait_for
from workers.core import insights, store

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def event(status: str, message_id: str, at: datetime, instance: str = "inst-a", **fields):
    values = {
        "provider": "zapi",
        "message_id": message_id,
        "status": status,
        "raw_status": status.upper(),
        "occurred_at": at,
        "received_at": at,
        "instance_id": instance,
        "failure_reason": None,
    }
    values.update(fields)
    return StatusEvent(**values)


def apply(conn: psycopg.Connection, *events: StatusEvent) -> None:
    with conn.transaction():
        store.apply_events(conn, list(events))


def counted(conn: psycopg.Connection) -> Counter:
    """insight_counts as it stands, zero rows left out."""
    rows = conn.execute("SELECT provider, instance_id, minute, metric, count FROM insight_counts")
    return Counter({tuple(row[:4]): row[4] for row in rows if row[4]})


def recomputed(conn: psycopg.Connection) -> Counter:
    """What insight_counts must hold: every message counted from scratch."""
    rows = conn.execute(
        "SELECT provider, coalesce(instance_id, ''), ticks_cohort_minute(m), metric, count(*)"
        " FROM messages m CROSS JOIN unnest(ticks_insight_metrics(m)) AS metric"
        " WHERE status IS NOT NULL AND created_at >= (SELECT since FROM insights_start)"
        " GROUP BY 1, 2, 3, 4"
    )
    return Counter({tuple(row[:4]): row[4] for row in rows})


def fetch(conn, **kwargs):
    options = {
        "since": T0 - timedelta(hours=1),
        "until": T0 + timedelta(hours=3),
        "now": T0 + timedelta(hours=5),
        "stuck_after": timedelta(minutes=10),
    }
    return insights.fetch(conn, **(options | kwargs))


def test_a_cohort_gives_exact_counts_ratios_and_percentiles(db):
    deliver = [2, 4, 6, 8, 10, 12]
    read = [60, 120, 180]
    for i in range(10):
        apply(db, event("sent", f"M{i}", T0 + timedelta(seconds=i)))
    for i, seconds in enumerate(deliver):
        apply(db, event("received", f"M{i}", T0 + timedelta(seconds=i + seconds)))
    for i, seconds in enumerate(read):
        apply(db, event("read", f"M{i}", T0 + timedelta(seconds=i + seconds)))
    apply(db, event("played", "M0", T0 + timedelta(seconds=200)))
    reason = "404: The number does not exist on WhatsApp"
    apply(db, event("failed", "M6", T0 + timedelta(seconds=30), failure_reason=reason))
    [entry] = fetch(db)
    assert entry["provider"] == "zapi" and entry["instance_id"] == "inst-a"
    counts = {k: entry[k] for k in ("sent", "delivered", "read", "played", "failed", "stuck")}
    assert counts == {
        "sent": 10,
        "delivered": 6,
        "read": 3,
        "played": 1,
        "failed": 1,
        "stuck": 3,
    }
    assert entry["ratios"] == {"delivered": 0.6, "read": 0.3, "failed": 0.1, "stuck": 0.3}
    assert entry["failures"] == [{"class": "recipient", "reason": "404", "count": 1}]
    # Nearest rank over the exact times; read from bins a quarter wide, within a quarter.
    for name, exact in (("p50", 6), ("p90", 12), ("p99", 12)):
        assert exact / 1.25 <= entry["time_to_deliver"][name] <= exact * 1.25, entry
    for name, exact in (("p50", 120), ("p90", 180), ("p99", 180)):
        assert exact / 1.25 <= entry["time_to_read"][name] <= exact * 1.25, entry
    assert entry["provisional"] is True  # until + 24 h is after now
    assert fetch(db, now=T0 + timedelta(days=2))[0]["provisional"] is False
    # Ten minutes after sending, nothing is stuck yet.
    assert fetch(db, now=T0 + timedelta(minutes=5))[0]["stuck"] == 0
    assert counted(db) == recomputed(db)


def test_a_late_sent_moves_the_message_to_its_minute(db):
    apply(db, event("read", "M1", T0 + timedelta(minutes=30)))
    assert {key[2] for key in counted(db)} == {T0 + timedelta(minutes=30)}
    apply(db, event("sent", "M1", T0))
    assert {key[2] for key in counted(db)} == {T0}
    [entry] = fetch(db)
    assert (entry["sent"], entry["delivered"], entry["read"]) == (1, 1, 1)
    assert 1800 / 1.25 <= entry["time_to_read"]["p50"] <= 1800 * 1.25
    assert counted(db) == recomputed(db)


def test_an_instance_named_late_takes_the_message_with_it(db):
    """A sent naming no instance, then a receipt that names it: the message counts once,
    under its instance, nothing left under none (nor a delivered without its sent)."""
    apply(db, event("sent", "M1", T0, instance=None))
    apply(db, event("received", "M1", T0 + timedelta(seconds=2), instance="inst-a"))
    assert counted(db) == recomputed(db)
    [entry] = fetch(db)
    assert (entry["instance_id"], entry["sent"], entry["delivered"], entry["stuck"]) == (
        "inst-a",
        1,
        1,
        0,
    )
    # In one batch too, and with the instance on the first event only.
    apply(
        db,
        event("sent", "M2", T0, instance=None),
        event("read", "M2", T0 + timedelta(seconds=5), instance="inst-b"),
    )
    assert counted(db) == recomputed(db)
    assert {(e["instance_id"], e["sent"]) for e in fetch(db)} == {("inst-a", 1), ("inst-b", 1)}


def test_buckets_and_filters(db):
    for i in range(3):
        apply(db, event("sent", f"A{i}", T0 + timedelta(minutes=50 * i)))
    apply(db, event("sent", "B1", T0, instance="inst-b"))
    apply(db, event("sent", "N1", T0, instance=None))
    by_hour = fetch(db, instance_id="inst-a", bucket="hour")
    assert [(e["since"], e["sent"]) for e in by_hour] == [
        (T0, 2),  # 9:00 and 9:50
        (T0 + timedelta(hours=1), 1),  # 10:40
    ]
    assert by_hour[0]["until"] == T0 + timedelta(hours=1)
    whole = fetch(db)
    assert sorted((e["instance_id"] or "", e["sent"]) for e in whole) == [
        ("", 1),
        ("inst-a", 3),
        ("inst-b", 1),
    ]
    assert fetch(db, provider="meta") == []
    # The window is by when messages were sent, to the minute.
    assert fetch(db, since=T0 + timedelta(minutes=1), instance_id="inst-a")[0]["sent"] == 2


def test_messages_stored_before_insights_began_are_left_out(db):
    apply(db, event("sent", "OLD", T0))
    db.execute("UPDATE insights_start SET since = now() + interval '1 hour'")
    try:
        apply(db, event("received", "OLD", T0 + timedelta(seconds=3)))
        apply(db, event("sent", "NEW", T0))
    finally:
        db.execute("UPDATE insights_start SET since = '-infinity'")
    # OLD was counted as sent when it was; its later change was not (no delivered without its
    # sent moving), and NEW, stored "before" insights began, not at all.
    assert counted(db) == Counter(
        {("zapi", "inst-a", T0, "sent"): 1, ("zapi", "inst-a", T0, "at_sent"): 1}
    )


def test_concurrent_workers_keep_the_counts_exact(database_url, db):
    """Batches of random events on shared messages, applied by four connections at once, in any
    order and with repeats: the counts equal every message's contribution recomputed."""
    rng = random.Random(7)
    statuses = ["sent", "received", "read", "played", "failed"]
    events = [
        event(
            status,
            f"M{rng.randrange(40)}",
            T0 + timedelta(seconds=rng.randrange(0, 7200)),
            instance=rng.choice(["inst-a", "inst-b"]),
            failure_reason=rng.choice([None, "131026 Message undeliverable"]),
        )
        for status in rng.choices(statuses, k=600)
    ]
    batches = [events[i : i + 15] for i in range(0, len(events), 15)]
    errors: list[BaseException] = []

    def work(share):
        try:
            with psycopg.connect(database_url) as conn:
                for batch in share:
                    apply(conn, *batch)  # a deadlock would fail the test
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(batches[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert counted(db) == recomputed(db)
    assert sum(e["sent"] for e in fetch(db)) == 40


@pytest.mark.parametrize(
    ("provider", "fixture", "expected"),
    [
        ("meta", "failed", ("recipient", "131049")),
        ("greenapi", "seed_failed", ("unknown", "failed")),
        ("greenapi", "yellow_card", ("policy_or_quality", "yellowCard")),
        ("twilio", "failed", ("integration", "63016")),
        ("twilio", "undelivered", ("recipient", "63024")),
        ("zapi", "delivery_failed", ("recipient", "The number does not exist on WhatsApp")),
        ("zapi", "delivery_failed_shadow_ban", ("policy_or_quality", "SHADOW_BAN")),
        ("waha", "ack_error", ("unknown", "ERROR")),
        ("evolution", "v2_error", ("unknown", "ERROR")),
    ],
)
def test_each_providers_failures_are_classed_as_its_parser_writes_them(provider, fixture, expected):
    """The reason read from what the provider's own parser stored (tests/fixtures)."""
    [failure] = (
        REGISTRY[provider]
        .parse(load_fixture(provider, fixture), received_at=T0, request_id="r")
        .events
    )
    assert failure.status == "failed"
    assert classify(provider, failure.failure_reason) == expected


@pytest.mark.parametrize(
    ("provider", "reason", "expected"),
    [
        ("meta", "131026 Message undeliverable", ("recipient", "131026")),
        ("meta", "131048 Spam rate limit hit", ("policy_or_quality", "131048")),
        (
            "meta",
            "131056 (Business Account, Consumer Account) pair rate limit",
            ("throttling", "131056"),
        ),
        ("meta", "368 Temporarily blocked for policies violations", ("policy_or_quality", "368")),
        ("meta", "131047 Re-engagement message", ("integration", "131047")),
        ("meta", "131016 Service unavailable", ("transient", "131016")),
        ("meta", "999999 Something new", ("unknown", "999999")),
        ("greenapi", "noAccount", ("recipient", "noAccount")),
        ("twilio", "failed", ("unknown", "failed")),
        ("zapi", "The number 5511987654321 is gone", ("unknown", "The number # is gone")),
        ("zapi", "Timeout on send message", ("transient", "Timeout on send message")),
        ("evolution", None, ("unknown", "unknown")),
    ],
)
def test_failures_are_classed_by_each_providers_codes(provider, reason, expected):
    assert classify(provider, reason) == expected


def test_the_database_bins_a_time_as_the_percentiles_read_it(db):
    seconds = [0.0, 0.1, 0.49, 0.5, 0.6, 0.625, 0.7, 1.0, 2.5, 59.9, 60.0, 3600.0, 259200.0, 1e9]
    rows = db.execute(
        "SELECT s, ticks_time_bin(s * interval '1 second') FROM unnest(%s::float8[]) AS s",
        (seconds,),
    ).fetchall()
    assert [(s, insights.time_bin(s)) for s in seconds] == rows
    assert db.execute("SELECT ticks_time_bin(NULL)").fetchone() == (None,)


def test_percentiles_read_from_the_bins_stay_within_a_quarter():
    rng = random.Random(3)
    for _ in range(50):
        values = sorted(
            rng.expovariate(1 / rng.choice([3, 60, 900])) for _ in range(rng.randint(1, 300))
        )
        bins = Counter(insights.time_bin(v) for v in values)
        estimate = insights.percentiles(dict(bins))
        for name, q in insights.QUANTILES:
            exact = values[max(1, math.ceil(q * len(values))) - 1]
            low, high = insights.bin_bounds(insights.time_bin(exact))
            assert low - 0.001 <= estimate[name] <= high + 0.001, (name, exact, estimate)  # rounded


# Through the endpoint and a real worker -------------------------------------------------


def zapi_status(status: str, message_id: str, at: datetime, instance: str) -> dict:
    return {
        "status": status,
        "ids": [message_id],
        "momment": int(at.timestamp() * 1000),
        "phone": "5511987654321",
        "type": "MessageStatusCallback",
        "instanceId": instance,
    }


@ON_EACH_BROKER
def test_insights_of_callbacks_a_worker_applied(client, start_worker):
    start_worker()
    sent = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=40)
    bodies = [zapi_status("SENT", f"E{i}", sent, "loja-1") for i in range(5)]
    bodies += [
        zapi_status("RECEIVED", f"E{i}", sent + timedelta(seconds=4), "loja-1") for i in range(3)
    ]
    bodies.append(zapi_status("READ", "E0", sent + timedelta(seconds=90), "loja-1"))
    bodies.append(
        {
            "phone": "5511987654321",
            "messageId": "E4",
            "instanceId": "loja-1",
            "momment": int((sent + timedelta(seconds=2)).timestamp() * 1000),
            "type": "DeliveryCallback",
            "error": "The number does not exist on WhatsApp",
        }
    )
    bodies.append(zapi_status("SENT", "F0", datetime.now(UTC) - timedelta(minutes=1), "loja-2"))
    for body in bodies:
        assert signed_post(client, "zapi", body).status_code == 200

    def ready():
        entries = client.get("/insights", headers=AUTH).json["insights"]
        done = {e["instance_id"]: e for e in entries}
        shop = done.get("loja-1", {})
        counts = tuple(shop.get(k) for k in ("sent", "delivered", "read", "failed"))
        return done if counts == (5, 3, 1, 1) and "loja-2" in done else None

    entries = wait_for(ready, timeout=30)
    shop = entries["loja-1"]
    assert (shop["sent"], shop["delivered"], shop["read"], shop["failed"], shop["stuck"]) == (
        5,
        3,
        1,
        1,
        1,
    )
    assert shop["ratios"] == {"delivered": 0.6, "read": 0.2, "failed": 0.2, "stuck": 0.2}
    assert 4 / 1.25 <= shop["time_to_deliver"]["p50"] <= 4 * 1.25
    assert shop["failures"] == [
        {"class": "recipient", "reason": "The number does not exist on WhatsApp", "count": 1}
    ]
    assert shop["provisional"] is True
    # The other number's message was sent a minute ago: not stuck yet.
    assert (entries["loja-2"]["sent"], entries["loja-2"]["stuck"]) == (1, 0)
    one = client.get("/insights?instance_id=loja-2&provider=zapi&bucket=hour", headers=AUTH).json
    assert [e["sent"] for e in one["insights"]] == [1]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("bucket=week", "bucket"),
        ("since=yesterday", "since"),
        ("since=2026-12-01T00:00:00", "since"),  # no offset
        ("provider=nope", "provider"),
        ("instance_id=", "instance_id"),
        ("since=2026-12-02T00:00:00Z&until=2026-12-01T00:00:00Z", "since"),
        ("since=2026-01-01T00:00:00Z&until=2026-12-01T00:00:00Z&bucket=hour", "since"),
        ("colour=blue", "colour"),
    ],
)
def test_a_bad_parameter_is_named(client, query, field):
    answer = client.get(f"/insights?{query}", headers=AUTH)
    assert answer.status_code == 400, answer.json
    assert field in answer.json["errors"], answer.json


def test_insights_need_the_api_token(client):
    assert client.get("/insights").status_code == 401
