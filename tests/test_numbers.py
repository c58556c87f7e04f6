"""Number health (workers/core/numbers.py): each instance judged from its provider's reports and
its traffic; each change once in the feed and once to a subscription, through the endpoint, a
real status worker (its watch thread) and a real delivery worker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from schemas.events import ConnectionEvent, StatusEvent
from tests.brokers import ON_EACH_BROKER
from tests.conftest import API_TOKEN, signed_post, wait_for
from tests.integration.test_outbound import FAST, subscribe
from tests.receiver import Receiver, verified
from tests.test_insights import zapi_status
from workers.celery_app import DELIVERY_QUEUE
from workers.core import numbers, store

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
STUCK = timedelta(minutes=10)


def counts(judged=0, window=0, recent=0, before=0):
    return (judged, window, recent, before)


@pytest.mark.parametrize(
    ("traffic", "report", "health"),
    [
        ({}, None, "ok"),
        ({"sent": counts(20), "at_sent": counts(10)}, None, "degraded"),
        ({"sent": counts(20), "at_sent": counts(9)}, None, "ok"),
        ({"sent": counts(19), "at_sent": counts(18)}, None, "ok"),  # too few to tell
        ({"sent": counts(5), "at_sent": counts(5)}, None, "silent"),
        ({"sent": counts(4), "at_sent": counts(4)}, None, "ok"),
        ({"sent": counts(40), "at_sent": counts(40)}, None, "silent"),
        ({"failure:recipient:131026": counts(6, 6, 6, 0)}, None, "degraded"),  # > max(5, 0)
        ({"failure:recipient:131026": counts(5, 5, 5, 0)}, None, "ok"),
        # Usually 4 a 5 minutes (1,152 a day): 13 is above 3 x 4.
        ({"failure:recipient:131026": counts(13, 13, 13, 1152)}, None, "degraded"),
        ({"failure:recipient:131026": counts(12, 12, 12, 1152)}, None, "ok"),
        ({"failure:policy_or_quality:131048": counts(1, 1, 1, 0)}, None, "restricted"),
        ({"failure:policy_or_quality:yellowCard": counts(0, 1, 0, 0)}, None, "restricted"),
        ({"failure:policy_or_quality:SHADOW_BAN": counts(0, 1, 0, 0)}, None, "restricted"),
        ({"failure:policy_or_quality:368": counts(1, 1, 1, 0)}, None, "ok"),  # the account's
        ({}, ("disconnected", "DisconnectedCallback", "phone offline"), "disconnected"),
        ({}, ("connecting", "STARTING", None), "ok"),
        ({}, ("banned", "blocked", None), "banned"),
        # The worse of the two.
        (
            {"sent": counts(5), "at_sent": counts(5)},
            ("restricted", "yellowCard", None),
            "restricted",
        ),
        ({"sent": counts(5), "at_sent": counts(5)}, ("connected", "authorized", None), "silent"),
    ],
)
def test_an_instance_is_judged_the_worse_of_its_report_and_its_traffic(traffic, report, health):
    verdict = numbers.judge(traffic, report, 20)
    assert verdict.health == health, verdict
    if health != "ok":
        assert verdict.reason


def status_event(
    status: str, message_id: str, at: datetime, instance: str = "loja-x"
) -> StatusEvent:
    return StatusEvent(
        provider="zapi",
        message_id=message_id,
        status=status,
        raw_status=status.upper(),
        occurred_at=at,
        received_at=at,
        instance_id=instance,
    )


@pytest.mark.parametrize(
    ("traffic", "previous", "health"),
    [
        # Half stuck turns it degraded; it stays so down to 40%, and is ok under.
        ({"sent": counts(20), "at_sent": counts(10)}, "ok", "degraded"),
        ({"sent": counts(20), "at_sent": counts(9)}, "ok", "ok"),
        ({"sent": counts(20), "at_sent": counts(8)}, "degraded", "degraded"),
        ({"sent": counts(20), "at_sent": counts(7)}, "degraded", "ok"),
        # A spike the same way: over max(5, 3x usual) to enter, 80% of it to stay.
        ({"failure:recipient:131026": counts(5, 5, 5, 0)}, "degraded", "degraded"),
        ({"failure:recipient:131026": counts(4, 4, 4, 0)}, "degraded", "ok"),
    ],
)
def test_a_number_at_a_threshold_does_not_change_health_at_every_watch(traffic, previous, health):
    assert numbers.judge(traffic, None, 20, previous).health == health


def sent_event(message_id: str, at: datetime, instance: str = "loja-x") -> StatusEvent:
    return status_event("sent", message_id, at, instance)


def received_event(message_id: str, at: datetime, instance: str = "loja-x") -> StatusEvent:
    return status_event("received", message_id, at, instance)


def apply(conn: psycopg.Connection, *events: StatusEvent) -> None:
    with conn.transaction():
        store.apply_events(conn, list(events))


def instance_changes(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "SELECT instance_id, previous_status, status, figures FROM changes"
        " WHERE kind = 'instance' ORDER BY id"
    ).fetchall()


def test_degraded_then_ok_again_each_change_once_in_the_feed(db):
    now = datetime.now(UTC)
    at = now - timedelta(minutes=15)
    apply(db, *(sent_event(f"S{i:02d}", at + timedelta(seconds=i)) for i in range(20)))
    apply(db, *(received_event(f"S{i:02d}", at + timedelta(seconds=30)) for i in range(5)))
    apply(db, sent_event("OTHER", at, instance="loja-y"))
    first = numbers.evaluate(db, now, STUCK)
    assert [(c.instance_id, c.previous, c.verdict.health) for c in first] == [
        ("loja-x", None, "degraded")
    ]
    assert numbers.evaluate(db, now + timedelta(seconds=30), STUCK) == []  # nothing new
    [(instance, previous, health, figures)] = instance_changes(db)
    assert (instance, previous, health) == ("loja-x", None, "degraded")
    assert (figures["numerator"], figures["denominator"]) == (15, 20)
    assert figures["samples"] == ["S05", "S06", "S07"]  # the first still at sent
    # Deliveries resume: 6 more received, 9 of 20 left at sent: still degraded (over 40%).
    apply(db, *(received_event(f"S{i:02d}", at + timedelta(seconds=40)) for i in range(5, 11)))
    assert numbers.evaluate(db, now + timedelta(seconds=40), STUCK) == []
    # 2 more: 7 of 20 (35%), clearly better: ok.
    apply(db, *(received_event(f"S{i:02d}", at + timedelta(seconds=45)) for i in range(11, 13)))
    later = numbers.evaluate(db, now + timedelta(minutes=1), STUCK)
    assert [(c.previous, c.verdict.health) for c in later] == [("degraded", "ok")]
    assert [row[1:3] for row in instance_changes(db)] == [(None, "degraded"), ("degraded", "ok")]
    health = db.execute(
        "SELECT instance_id, health FROM instance_health ORDER BY instance_id"
    ).fetchall()
    assert health == [("loja-x", "ok"), ("loja-y", "ok")]


def test_a_silent_instance_and_a_reported_disconnection(db):
    now = datetime.now(UTC)
    apply(db, *(sent_event(f"Q{i}", now - timedelta(minutes=20), "quiet") for i in range(6)))
    store.record_connections(
        db,
        [
            ConnectionEvent(
                provider="zapi",
                instance_id="off",
                state="disconnected",
                raw_state="DisconnectedCallback",
                occurred_at=now,
                received_at=now,
                reason="Device has been disconnected",
            )
        ],
    )
    changes = {c.instance_id: c.verdict for c in numbers.evaluate(db, now, STUCK)}
    assert changes["quiet"].health == "silent"
    assert changes["off"].health == "disconnected"
    assert "Device has been disconnected" in changes["off"].reason


def test_a_long_stuck_after_still_judges_and_one_watch_a_interval_judges(db):
    now = datetime.now(UTC)
    stuck_after = timedelta(hours=1)  # longer than the 30-minute window
    apply(db, *(sent_event(f"L{i}", now - timedelta(minutes=70)) for i in range(6)))
    [change] = numbers.evaluate(db, now, stuck_after, every=timedelta(seconds=30))
    assert change.verdict.health == "silent"
    assert change.verdict.figures["window_minutes"] == 20
    # Another worker's watch ten seconds later: judged less than half an interval ago.
    assert (
        numbers.evaluate(db, now + timedelta(seconds=10), stuck_after, timedelta(seconds=30)) == []
    )
    checked = db.execute("SELECT checked_at FROM instance_health").fetchone()[0]
    assert checked == now


def test_a_reported_reason_never_shows_a_number():
    verdict = numbers.judge(
        {}, ("disconnected", "close 401", "logged out from +55 11 987654321 / 5511987654321"), 20
    )
    assert verdict.health == "disconnected" and "5511987654321" not in verdict.reason


def test_a_failure_spike_degrades_and_names_its_messages(db):
    now = datetime.now(UTC)
    at = now - timedelta(minutes=2)
    failures = [
        StatusEvent(
            provider="meta",
            message_id=f"wamid.F{i}",
            status="failed",
            raw_status="failed",
            occurred_at=at,
            received_at=at,
            instance_id="1065",
            failure_reason="131026 Message undeliverable",
        )
        for i in range(8)
    ]
    apply(db, *failures)
    [change] = numbers.evaluate(db, now, STUCK)
    assert change.verdict.health == "degraded"
    assert change.verdict.figures["class"] == "recipient"
    assert change.verdict.figures["numerator"] == 8
    assert len(change.verdict.figures["samples"]) == 3


# Through the endpoint, a real worker's watch and a real delivery worker -------------------


def zapi(status: str, message_id: str, at: datetime) -> dict:
    return zapi_status(status, message_id, at, "loja-x")


@ON_EACH_BROKER
def test_messages_stopping_at_one_tick_turn_the_number_degraded_then_ok(app, client, start_worker):
    receiver = Receiver().start()
    try:
        _, secret = subscribe(app, receiver.url, "--status", "read")  # health passes anyway
        # The first worker applies the callbacks; its watch judges once, at its start, before
        # any (HEALTH_INTERVAL an hour), so no verdict is taken between the sent and the
        # received of these messages (all sent, none received yet: silent, rightly).
        start_worker("w1", env={"HEALTH_INTERVAL": "3600"})
        start_worker("d1", pool="threads", concurrency=4, queues=DELIVERY_QUEUE, env=FAST)
        sent = datetime.now(UTC) - timedelta(minutes=15)
        bodies = [zapi("SENT", f"T{i}", sent + timedelta(seconds=i)) for i in range(20)]
        bodies += [zapi("RECEIVED", f"T{i}", sent + timedelta(seconds=30)) for i in range(5)]
        for body in bodies:
            assert signed_post(client, "zapi", body).status_code == 200

        def applied():
            shop = client.get("/insights?instance_id=loja-x", headers=AUTH).json["insights"]
            return shop and (shop[0]["sent"], shop[0]["delivered"]) == (20, 5)

        wait_for(applied, timeout=30)
        start_worker("w2", env={"HEALTH_INTERVAL": "1"})  # its watch, every second from now

        def health():
            [row] = [
                i
                for i in client.get("/instances", headers=AUTH).json["instances"]
                if i["instance_id"] == "loja-x"
            ] or [None]
            return row and row["health"]

        wait_for(lambda: health() == "degraded", timeout=30)
        [shown] = [
            i
            for i in client.get("/instances", headers=AUTH).json["instances"]
            if i["instance_id"] == "loja-x"
        ]
        assert shown["since"] and "15 of 20" in shown["health_reason"]
        assert (shown["last_hour"]["sent"], shown["last_hour"]["stuck"]) == (20, 15)
        for i in range(5, 20):  # deliveries resume
            body = zapi("RECEIVED", f"T{i}", sent + timedelta(seconds=40))
            assert signed_post(client, "zapi", body).status_code == 200
        wait_for(lambda: health() == "ok", timeout=30)

        def health_posts():
            got = [r for r in receiver.delivered() if r.document["type"] == "instance.health"]
            return got if len(got) >= 2 else None

        posts = wait_for(health_posts, timeout=30)
        assert [
            (p.document["data"]["previous_health"], p.document["data"]["health"]) for p in posts
        ] == [
            (None, "degraded"),
            ("degraded", "ok"),
        ]
        assert all(verified(secret, p) for p in posts)
        degraded = posts[0].document["data"]
        assert degraded["instance_id"] == "loja-x" and degraded["reason"]
        assert degraded["figures"]["numerator"] == 15 and degraded["figures"]["denominator"] == 20
        assert len(degraded["figures"]["samples"]) == 3
        feed = client.get("/changes?after=0&limit=500", headers=AUTH).json["changes"]
        kinds = [(c["type"], c.get("health")) for c in feed if c["type"] == "instance.health"]
        assert kinds == [("instance.health", "degraded"), ("instance.health", "ok")]
        # The read-only subscription got no message statuses, only the instance's health.
        assert {r.document["type"] for r in receiver.delivered()} == {"instance.health"}
    finally:
        receiver.stop()


def test_the_insights_command_and_metrics_show_a_degraded_number(app, client, db):
    now = datetime.now(UTC)
    at = now - timedelta(minutes=15)
    apply(db, *(sent_event(f"S{i:02d}", at) for i in range(20)))
    apply(db, *(received_event(f"S{i:02d}", at + timedelta(seconds=3)) for i in range(5)))
    numbers.evaluate(db, now, STUCK)
    result = app.test_cli_runner().invoke(args=["insights"])
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()
    assert header.split()[:3] == ["provider", "instance", "health"]
    cells = row.split()
    assert cells[:3] == ["zapi", "loja-x", "degraded"]
    assert cells[5:10] == ["20", "25%", "0%", "0%", "15"]  # sent, delivered, read, failed, stuck
    assert "15 of 20 messages sent in the window still at sent" in row
    scrape = client.get("/metrics", headers=AUTH).text
    assert 'ticks_instances{health="degraded",provider="zapi"} 1.0' in scrape
    assert 'ticks_instances{health="ok",provider="meta"} 0.0' in scrape  # every series
    assert 'ticks_stuck_messages{provider="zapi"} 15.0' in scrape
