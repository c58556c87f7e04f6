"""The status page at /, served by the app on real Postgres and Redis: who may see it, what
it counts, and what it says when a server is down. What a person sees in a browser is in
tests/integration/test_status_page_browser.py."""

from __future__ import annotations

import base64
import re
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from app import status_page
from app.config import load_config
from schemas.events import StatusEvent
from schemas.registry import PROVIDERS
from tests.conftest import API_TOKEN, WEBHOOK_TOKENS, free_port, load_fixture, make_app
from workers.core import store

NOW = datetime(2026, 11, 29, 15, 30, 20, tzinfo=UTC)


def basic(user: str, password: str) -> dict[str, str]:
    pair = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {pair}"}


BEARER = {"Authorization": f"Bearer {API_TOKEN}"}


def event(message_id: str, status: str, provider: str = "zapi", **fields) -> StatusEvent:
    values = {
        "provider": provider,
        "message_id": message_id,
        "status": status,
        "raw_status": status.upper(),
        "occurred_at": NOW,
        "received_at": NOW,
        "phone": "5511987654321",
        "failure_reason": f"{status}: noAccount" if status == "failed" else None,
    }
    return StatusEvent(**(values | fields))


def apply(db, *events: StatusEvent) -> None:
    with db.transaction():
        store.apply_events(db, list(events))


def card(html: str, name: str) -> tuple[str, str]:
    """(class, text of the value) of a card on the page."""
    found = re.search(rf'id="card-{name}" class="([^"]*)">\s*<dt>[^<]*</dt>\s*<dd>(.*?)</dd>', html)
    assert found, f"no card {name}"
    return found.group(1), re.sub(r"<[^>]+>", "", found.group(2)).strip()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("ops", "wrong"),
        basic("ops", ""),
        {"Authorization": f"Bearer {API_TOKEN}x"},
        {"Authorization": f"Bearer {WEBHOOK_TOKENS['zapi'][0]}"},
        {"Authorization": "Basic !!not-base64"},
    ],
    ids=["none", "wrong-password", "empty-password", "wrong-bearer", "webhook-token", "garbled"],
)
def test_the_page_needs_the_api_token(client, headers):
    response = client.get("/", headers=headers)
    assert response.status_code == 401
    assert response.json == {"error": "missing or invalid API token"}
    # A browser asks the person for it.
    assert response.headers["WWW-Authenticate"] == 'Basic realm="Ticks", charset="UTF-8"'
    assert "Ticks status" not in response.text


@pytest.mark.parametrize("headers", [BEARER, basic("ops", API_TOKEN), basic("", API_TOKEN)])
def test_the_token_as_bearer_or_as_any_users_password(client, headers):
    response = client.get("/", headers=headers)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert "<title>Ticks status</title>" in response.text


def test_the_page_loads_nothing_it_did_not_serve_and_is_never_cached_or_framed(client):
    response = client.get("/", headers=BEARER)
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "script-src" not in policy  # no script at all
    assert response.headers["Cache-Control"] == "no-store"
    with client.get("/static/status.css") as stylesheet:
        assert stylesheet.status_code == 200 and stylesheet.mimetype == "text/css"


def test_counts_by_provider_and_status_over_the_hour_and_the_day(db):
    apply(db, *(event(f"m{n}", "sent") for n in range(4)))
    apply(db, event("m0", "received"), event("m0", "read"), event("m1", "played"))
    apply(db, event("g1", "failed", provider="greenapi"))
    # Not counted as failures: one that came after a read (not believed); read_by_me.
    apply(db, event("m0", "failed"), event("m0", "read_by_me"))
    apply(db, event("old", "sent"), event("older", "sent"))
    db.execute(
        "UPDATE status_events SET created_at = now() - interval '5 hours' WHERE message_id = 'old'"
    )
    db.execute(
        "UPDATE status_events SET created_at = now() - interval '25 hours'"
        " WHERE message_id = 'older'"
    )

    overview = store.fetch_overview(db)
    hour = status_page.count_table(overview["counts"], "hour")
    day = status_page.count_table(overview["counts"], "day")
    rows = {row["provider"]: row["cells"] for row in hour["rows"]}
    # sent, received, read, played, failed
    assert rows == {
        **{provider: [0, 0, 0, 0, 0] for provider in PROVIDERS},
        "zapi": [4, 1, 1, 1, 0],
        "greenapi": [0, 0, 0, 0, 1],
    }
    # On the page: the providers configured, and any other that has events.
    shown = status_page.count_table(overview["counts"], "hour", ["plug"])
    assert [row["provider"] for row in shown["rows"]] == ["plug", "zapi", "greenapi"]
    assert shown["totals"] == hour["totals"]
    assert status_page.count_table({}, "day", [])["totals"] == [0, 0, 0, 0, 0]
    assert hour["totals"] == [4, 1, 1, 1, 1]
    assert day["totals"] == [5, 1, 1, 1, 1]  # 5 hours ago: the day's; 25 hours: neither


def test_the_chart_and_the_hour_counts_cover_the_same_sixty_minutes(db):
    apply(db, event("first", "sent"), event("before", "sent"))
    for _attempt in range(2):  # again if a minute turned between the updates and the read
        [[minute]] = db.execute("SELECT date_trunc('minute', now())")
        db.execute(
            "UPDATE status_events SET created_at = %s - interval '59 minutes'"
            " WHERE message_id = 'first'",
            (minute,),
        )
        db.execute(
            "UPDATE status_events SET created_at = %s - interval '59 minutes' - interval '1 ms'"
            " WHERE message_id = 'before'",
            (minute,),
        )
        overview = store.fetch_overview(db)
        if overview["now"].replace(second=0, microsecond=0) == minute:
            break
    assert [(row["minute"], row["events"]) for row in overview["per_minute"]] == [
        (minute - timedelta(minutes=59), 1)
    ]
    # The table's "last hour" is the chart's window too.
    assert overview["counts"][("zapi", "sent")] == {"hour": 1, "day": 2}


def test_latest_failures_newest_recorded_first_with_their_reasons(db):
    for n in range(25):
        apply(db, event(f"f{n}", "failed", occurred_at=NOW + timedelta(minutes=n)))
    # Recorded last, though the provider dated it earliest: it is the latest Ticks learnt of.
    apply(db, event("late-news", "failed", occurred_at=NOW - timedelta(days=1)))
    # Not a failure: it came after a read (the message stays read).
    apply(db, event("r1", "read"), event("r1", "failed"))
    failed = store.fetch_overview(db, failures=20)["failed"]
    assert [row["message_id"] for row in failed] == ["late-news"] + [
        f"f{n}" for n in range(24, 5, -1)
    ]
    assert failed[0]["failure_reason"] == "failed: noAccount"
    assert failed[0]["failed_at"] == NOW - timedelta(days=1)
    # The order shown is the order read: by when Ticks recorded each (the provider's time
    # beside it once looked unordered).
    recorded = [row["recorded_at"] for row in failed]
    assert recorded == sorted(recorded, reverse=True)


def test_the_page_masks_phones_and_escapes_what_providers_wrote(client, db):
    apply(db, event("x1", "failed", failure_reason='<img src=x onerror="alert(1)">'))
    html = client.get("/", headers=BEARER).text
    assert "5511987654321" not in html
    assert "*********4321" in html
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html


def test_quarantine_and_dead_letters_pending_and_of_the_day(client, db):
    for n, resolved in enumerate((None, None, "discarded")):
        store.record_quarantine(
            db,
            {
                "request_id": f"r{n}",
                "provider": "plug",
                "reason": "validation",
                "errors": "{}",
                "raw_body": "{}",
                "content_type": "application/json",
                "received_at": datetime.now(UTC) - timedelta(minutes=1),  # within the day
            },
        )
        if resolved:
            [[item_id]] = db.execute("SELECT id FROM quarantine WHERE request_id = %s", (f"r{n}",))
            store.resolve_quarantine(db, item_id, resolved)
    store.record_dead_letter(
        db,
        {
            "task_id": "t1",
            "task_name": "ticks.apply_events",
            "payload": [],
            "error": "x",
            "deliveries": 3,
        },
    )
    html = client.get("/", headers=BEARER).text
    assert card(html, "quarantine") == ("bad", "2 3 in 24 h")
    assert card(html, "dead-letters") == ("bad", "1 1 in 24 h")


def test_a_discarded_dead_letter_no_longer_turns_the_page_red(client, db):
    letter = {"task_name": "ticks.apply_events", "payload": [], "error": "x", "deliveries": 3}
    poison = store.record_dead_letter(db, {**letter, "task_id": "poison"})
    client.application.config["STATUS_PAGE_CACHE_SECONDS"] = 0
    assert card(client.get("/", headers=BEARER).text, "dead-letters") == ("bad", "1 1 in 24 h")
    assert store.discard_dead_letter(db, poison)
    # Not red for the 30 days it is kept: still counted among the day's arrivals.
    assert card(client.get("/", headers=BEARER).text, "dead-letters") == ("", "0 1 in 24 h")


def test_an_idle_ticks_shows_nothing_alarming(client):
    html = client.get("/", headers=BEARER).text
    for name in ("queue", "queue-age", "failed", "quarantine", "dead-letters"):
        assert card(html, name)[0] == "", name
    assert card(html, "queue-age")[1] == "0 s"
    assert "No failed messages." in html
    assert html.count('<g class="bar">') == 60


def test_a_queue_falling_behind_is_flagged(client, broker):
    url = f"/webhooks/zapi/{WEBHOOK_TOKENS['zapi'][0]}"
    for n in range(3):  # no worker: they wait
        body = load_fixture("zapi", "seed_sent") | {"ids": [f"Q{n}"]}
        assert client.post(url, json=body).status_code == 200
    html = client.get("/", headers=BEARER).text
    assert card(html, "queue") == ("", "3 task messages")  # one after another: one each
    [oldest] = broker.zrange("ticks:inflight", 0, 0)
    broker.zadd("ticks:inflight", {oldest: time.time() - 125})
    html = client.get("/", headers=BEARER).text
    assert card(html, "queue-age") == ("bad", "2 min 5 s")


def test_with_the_database_down_the_page_still_answers_and_says_so(client, monkeypatch):
    dead = ConnectionPool(
        f"postgresql://127.0.0.1:{free_port()}/x",
        min_size=0,
        max_size=1,
        timeout=1,
        open=True,
        kwargs={"connect_timeout": 1},
    )
    monkeypatch.setattr(status_page, "pool", lambda: dead)
    try:
        response = client.get("/", headers=BEARER)
    finally:
        dead.close()
    assert response.status_code == 200
    assert 'id="service-database" class="bad">PostgreSQL: did not answer' in response.text
    assert 'id="service-broker" class="ok">Broker: answering' in response.text
    assert card(response.text, "queue")[1].startswith("0")
    assert "card-failed" not in response.text


def test_with_the_broker_down_the_page_still_answers_and_says_so(database_url, db):
    client = make_app(database_url, f"redis://127.0.0.1:{free_port()}/0").test_client()
    response = client.get("/", headers=BEARER)
    assert response.status_code == 200
    assert 'id="service-broker" class="bad">Broker: did not answer' in response.text
    assert 'id="service-database" class="ok">' in response.text
    assert card(response.text, "queue")[1] == "?"
    assert card(response.text, "failed")[1] == "0"


def test_the_chart_fills_quiet_minutes_and_scales_to_the_busiest():
    rows = [
        {"minute": NOW.replace(second=0) - timedelta(minutes=2), "events": 37, "failed": 3},
        {"minute": NOW.replace(second=0), "events": 12, "failed": 0},
        {"minute": NOW.replace(second=0) - timedelta(minutes=60), "events": 999, "failed": 0},
    ]
    chart = status_page.throughput_chart(rows, NOW)
    assert len(chart.bars) == 60
    assert (chart.total, chart.failed) == (49, 3)  # 60 minutes ago is outside the chart
    assert [value for _, value in chart.ticks] == [0, 20, 40]
    assert chart.bars[57].title == "15:28 UTC: 37 events, 3 failed"
    assert chart.bars[59].title == "15:30 UTC: 12 events, 0 failed"
    assert chart.bars[58].height == 0
    assert chart.bars[57].height == pytest.approx(chart.bars[59].height * 37 / 12, abs=0.05)
    assert [label for _, label in chart.labels] == ["14:31", "15:01", "15:30"]


def test_one_failure_among_thousands_of_events_still_shows():
    rows = [{"minute": NOW.replace(second=0), "events": 4000, "failed": 1}]
    bar = status_page.throughput_chart(rows, NOW).bars[-1]
    assert bar.failed_height >= status_page.MIN_BAR
    assert bar.failed_y + bar.failed_height == bar.y + bar.height  # on the bar's foot


@pytest.mark.parametrize(
    ("value", "ceiling"),
    [(0, 1), (1, 1), (2, 2), (3, 3), (7, 8), (9, 10), (11, 20), (21, 25), (2087, 2500)],
)
def test_the_charts_top_is_a_round_number(value, ceiling):
    assert status_page.nice_ceiling(value) == ceiling


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0 s"), (59.9, "59 s"), (125, "2 min 5 s"), (7800, "2 h 10 min")]
)
def test_durations_read_as_a_person_would(seconds, text):
    assert status_page.duration(seconds) == text


def test_one_read_serves_every_view_for_the_cache_interval(database_url, redis_url, db, broker):
    cached = make_app(database_url, redis_url).test_client()  # STATUS_PAGE_CACHE_SECONDS=10
    fresh = make_app(database_url, redis_url, STATUS_PAGE_CACHE_SECONDS=0).test_client()
    for client in (cached, fresh):
        assert card(client.get("/", headers=BEARER).text, "failed")[1] == "0"
    apply(db, event("late", "failed"))
    assert card(cached.get("/", headers=BEARER).text, "failed")[1] == "0"
    assert card(fresh.get("/", headers=BEARER).text, "failed")[1] == "1"


def test_counts_that_take_too_long_are_cancelled_and_the_page_says_so(
    client, database_url, monkeypatch
):
    monkeypatch.setattr(status_page, "QUERY_TIMEOUT_MS", 300)
    only = ConnectionPool(database_url, min_size=1, max_size=1, open=True)
    monkeypatch.setattr(status_page, "pool", lambda: only)
    try:
        with psycopg.connect(database_url) as blocker:
            blocker.execute("LOCK TABLE quarantine IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            response = client.get("/", headers=BEARER)
            waited = time.monotonic() - started
        assert response.status_code == 200
        assert "PostgreSQL: too slow to answer (over 0.3 s)" in response.text
        assert waited < 5
        # The one connection went back to the pool without the timeout.
        with only.connection() as conn:
            assert conn.execute("SHOW statement_timeout").fetchone()[0] == "0"
    finally:
        only.close()


@pytest.mark.parametrize("value", ["ten", "-1", "inf", "nan", "1e9"])
def test_a_bad_cache_setting_stops_the_start_naming_it(value):
    with pytest.raises(RuntimeError, match="STATUS_PAGE_CACHE_SECONDS must be a number"):
        load_config({"STATUS_PAGE_CACHE_SECONDS": value})


def test_the_cache_setting_takes_seconds():
    assert load_config({"STATUS_PAGE_CACHE_SECONDS": "2.5"})["STATUS_PAGE_CACHE_SECONDS"] == 2.5
    assert load_config({})["STATUS_PAGE_CACHE_SECONDS"] == 10


def test_the_latest_failures_are_read_from_their_index_without_a_sort(db):
    apply(db, *(event(f"f{n}", "failed", occurred_at=NOW + timedelta(seconds=n)) for n in range(5)))
    with db.transaction():
        db.execute("SET LOCAL enable_seqscan = off")
        db.execute("SET LOCAL enable_sort = off")
        plan = "\n".join(
            row[0] for row in db.execute("EXPLAIN " + store.LATEST_FAILED, {"limit": 20})
        )
    # The history is partitioned by day: each day's copy of the partial index, merged.
    day_indexes = {
        name
        for (name,) in db.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits"
            " WHERE inhparent = 'status_events_failed'::regclass"
        )
    }
    scanned = set(re.findall(r"Index Scan using (\S+) on status_events_", plan))
    assert scanned and scanned <= day_indexes, plan
    assert "Sort" not in plan, plan
