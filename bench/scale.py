"""Scale: Ticks with BENCH_SCALE_EVENTS (10 million) history rows spread over 60 days, against
the same with BENCH_SCALE_SMALL (100 thousand), each in a database of its own:

- the apply rate: the store applying batches of 100 events (new messages' sent, the received
  and read of the messages of the batches before, and a quarter on messages picked at random
  from the 60 days: late receipts and repeats), one connection, rounds alternating between
  the two databases;
- GET /messages/<provider>/<id> p99 (random messages of the 60 days) and the status page
  (uncached), through the app in this process;
- the apply rate while housekeeping runs on the large database (in a process of its own:
  the history's oldest 15 days dropped, a quarter of the messages expired in batches), against
  the rate just before.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from bench.common import ROOT, log
from embedded import EmbeddedRedis
from workers.core.migrate import migrate

DAYS = 60
FILL_MESSAGES = """
INSERT INTO messages (provider, message_id, status, phone, chat_id, chat_kind, seen, sent_at,
                      received_at, read_at, created_at, updated_at)
SELECT 'zapi', 'M' || i, 'read', p, p, 'user', '{sent,received,read}', t,
       t + interval '1 second', t + interval '2 seconds', t, t + interval '2 seconds'
FROM generate_series(1, %(n)s) AS i,
     LATERAL (SELECT now() - (%(n)s - i) * %(step)s * interval '1 second' AS t,
                     '55119' || lpad(i::text, 8, '0') AS p) AS x
"""
FILL_EVENTS = """
INSERT INTO status_events (provider, message_id, status, raw_status, occurred_at, received_at,
                           applied, created_at)
SELECT m.provider, m.message_id, s.status, upper(s.status), t, t, true, t
FROM messages m
CROSS JOIN LATERAL (VALUES ('sent', 0), ('received', 1), ('read', 2)) AS s(status, n)
CROSS JOIN LATERAL (SELECT m.created_at + s.n * interval '1 second' AS t) AS at
ORDER BY m.created_at
"""
STATUSES = ("SENT", "RECEIVED", "READ")


def fill(url: str, events: int) -> int:
    """A migrated database holding ``events`` history rows over DAYS days; the messages."""
    from workers.lifecycle.housekeeping import ensure_partitions

    migrate(url)
    messages = events // 3
    with psycopg.connect(url, autocommit=True) as conn:
        today = datetime.now(UTC).date()
        ensure_partitions(conn, today - timedelta(days=DAYS + 1), today + timedelta(days=7))
        started = time.monotonic()
        conn.execute(FILL_MESSAGES, {"n": messages, "step": DAYS * 86400 / messages})
        conn.execute(FILL_EVENTS)
        conn.execute("VACUUM ANALYZE")
        # The fill's dirty pages written out now, not by a checkpoint during the measures.
        conn.execute("CHECKPOINT")
        log(f"scale: {messages * 3} history rows written in {time.monotonic() - started:.0f}s")
    return messages


def batches(prefix: str, count: int, known: int, seed: int) -> list[list[Any]]:
    """The events of ``count`` batches of 100 (see the module's docstring)."""
    from schemas.events import StatusEvent

    rng = random.Random(seed)
    moment = datetime.now(UTC)

    def event(message_id: str, status: str) -> StatusEvent:
        return StatusEvent(
            provider="zapi",
            message_id=message_id,
            status=status.lower(),
            raw_status=status,
            occurred_at=moment,
            received_at=moment,
            phone="5511987654321",
        )

    out = []
    for b in range(count):
        batch = [event(f"{prefix}-{b}-{i}", "SENT") for i in range(25)]
        batch += [event(f"{prefix}-{b - 1}-{i}", "RECEIVED") for i in range(25) if b >= 1]
        batch += [event(f"{prefix}-{b - 2}-{i}", "READ") for i in range(25) if b >= 2]
        batch += [event(f"M{rng.randint(1, known)}", rng.choice(STATUSES)) for _ in range(25)]
        out.append(batch)
    return out


def apply_rate(url: str, work: list[list[Any]]) -> float:
    """Events per second the store applies, one transaction per batch."""
    from workers.core import store

    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        for batch in work:
            with conn.transaction():
                store.apply_events(conn, batch)
        return sum(len(b) for b in work) / (time.perf_counter() - started)


def read_latencies(url: str, redis_url: str, known: int, requests: int = 2000) -> dict[str, float]:
    """GET /messages/... p50/p99 over random messages, and the status page's median (ms)."""
    from app import create_app

    app = create_app(
        {
            "DATABASE_URL": url,
            "BROKER_URL": redis_url,
            "API_TOKEN": "bench-api",
            "STATUS_PAGE_CACHE_SECONDS": 0,
        }
    )
    client = app.test_client()
    auth = {"Authorization": "Bearer bench-api"}
    rng = random.Random(7)
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(f"/messages/zapi/M{rng.randint(1, known)}", headers=auth)
        samples.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200 or len(response.get_json()["events"]) != 3:
            raise SystemExit(f"bench: GET /messages failed: {response.status_code}")
    samples.sort()
    pages = []
    for _ in range(5):
        started = time.perf_counter()
        page = client.get("/", headers=auth)
        pages.append((time.perf_counter() - started) * 1000)
        if page.status_code != 200 or "did not answer" in page.text:
            raise SystemExit(f"bench: the status page failed: {page.status_code}")
    return {
        "message_p50_ms": round(samples[len(samples) // 2], 2),
        "message_p99_ms": round(samples[int(len(samples) * 0.99)], 2),
        "status_page_ms": round(statistics.median(pages), 1),
    }


# A day of insight counts as 1 million messages over INSIGHT_INSTANCES instances leave them:
# every minute of each, sent, delivered, read and at_sent, 8 bins of time to deliver and 10 to
# read, two failure reasons (the counts' size depends on instances and minutes, not messages).
INSIGHT_INSTANCES = 10
FILL_INSIGHTS = """
INSERT INTO insight_counts (provider, instance_id, minute, metric, count)
SELECT 'zapi', 'inst-' || i, date_trunc('minute', now()) - m * interval '1 minute', metric,
       greatest(1, (1000000 / 1440 / %(instances)s) / (1 + k))
FROM generate_series(1, %(instances)s) AS i,
     generate_series(0, 1439) AS m,
     unnest(ARRAY['sent', 'delivered', 'read', 'at_sent', 'failed',
                  'failure:recipient:131026', 'failure:policy:131049']
            || ARRAY(SELECT 'deliver:' || b FROM generate_series(2, 9) AS b)
            || ARRAY(SELECT 'read:' || b FROM generate_series(10, 19) AS b))
         WITH ORDINALITY AS x(metric, k)
ON CONFLICT DO NOTHING
"""


def insights_off() -> Any:
    """A context in which the store keeps no insight counts (the cost's reference)."""
    import contextlib

    from workers.core import insights

    @contextlib.contextmanager
    def off() -> Any:
        saved = insights.counted_before, insights.add_changes
        insights.counted_before = lambda cur, keys: []  # type: ignore[assignment]
        insights.add_changes = lambda cur, keys, before: None  # type: ignore[assignment]
        try:
            yield
        finally:
            insights.counted_before, insights.add_changes = saved

    return off()


def insights_cost(url: str, known: int) -> dict[str, Any]:
    """The apply rate with the insight counts kept against without, rounds alternating."""
    rates: dict[str, list[float]] = {"with": [], "without": []}
    for round_ in range(5):
        work = batches(f"I{round_}", 200, known, seed=20 + round_)
        rates["with"].append(apply_rate(url, work))
        with insights_off():
            work = batches(f"J{round_}", 200, known, seed=20 + round_)
            rates["without"].append(apply_rate(url, work))
    rate = {name: round(statistics.median(values)) for name, values in rates.items()}
    return {"apply_per_second": rate, "ratio": round(rate["with"] / rate["without"], 3)}


def insights_latency(url: str, redis_url: str) -> dict[str, float]:
    """GET /insights over a day of counts as 1 million messages leave them (ms, median of 5):
    every instance, and one instance by hour."""
    from app import create_app

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FILL_INSIGHTS, {"instances": INSIGHT_INSTANCES})
        conn.execute("VACUUM ANALYZE insight_counts")
    app = create_app({"DATABASE_URL": url, "BROKER_URL": redis_url, "API_TOKEN": "bench-api"})
    client = app.test_client()
    auth = {"Authorization": "Bearer bench-api"}
    result = {}
    for name, query in (
        ("day_all_ms", ""),
        ("day_one_by_hour_ms", "?instance_id=inst-1&bucket=hour"),
    ):
        samples = []
        for _ in range(5):
            started = time.perf_counter()
            answer = client.get(f"/insights{query}", headers=auth)
            samples.append((time.perf_counter() - started) * 1000)
            if answer.status_code != 200 or not answer.get_json()["insights"]:
                raise SystemExit(f"bench: GET /insights failed: {answer.status_code}")
        result[name] = round(statistics.median(samples), 1)
    return result


HOUSEKEEPER = """
import sys
from workers.lifecycle.housekeeping import Retention, run
report = run(sys.argv[1], Retention(history_days=45, message_days=46))
print(report)
"""


def bench_scale(
    env: dict[str, str], database_url: str, broker: EmbeddedRedis, tmp: Path
) -> dict[str, Any]:
    import os

    large_events = int(os.environ.get("BENCH_SCALE_EVENTS", "10000000"))
    small_events = int(os.environ.get("BENCH_SCALE_SMALL", "100000"))
    urls = {}
    known = {}
    with psycopg.connect(database_url, autocommit=True) as admin:
        for name, events in (("small", small_events), ("large", large_events)):
            admin.execute(f'CREATE DATABASE "ticks_scale_{name}"')
            urls[name] = make_conninfo(database_url, dbname=f"ticks_scale_{name}")
            known[name] = fill(urls[name], events)
    rates: dict[str, list[float]] = {"small": [], "large": []}
    for round_ in range(5):
        for name in ("small", "large"):
            work = batches(f"R{round_}", 300, known[name], seed=round_)
            rates[name].append(apply_rate(urls[name], work))
    rate = {name: round(statistics.median(values)) for name, values in rates.items()}
    log(f"scale: apply {rate['large']}/s at {large_events} rows, {rate['small']}/s at the small")
    reads = {name: read_latencies(urls[name], broker.url, known[name]) for name in urls}
    log(f"scale: reads {reads}")
    insight = insights_cost(urls["large"], known["large"])
    insight["query"] = insights_latency(urls["large"], broker.url)
    log(f"scale: insights {insight}")

    # Housekeeping's cost to the workers: the rate while it runs, against the rate before.
    before = apply_rate(urls["large"], batches("HK0", 200, known["large"], seed=10))
    housekeeper = subprocess.Popen(
        [sys.executable, "-c", HOUSEKEEPER, urls["large"]],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(2)  # under way: partitions detached, messages going
    # Rounds of 50 batches for as long as it runs (one at least).
    applied = seconds = 0.0
    round_ = 0
    while round_ == 0 or (housekeeper.poll() is None and seconds < 120):
        work = batches(f"HK1-{round_}", 50, known["large"], seed=11 + round_)
        started = time.perf_counter()
        apply_rate(urls["large"], work)
        seconds += time.perf_counter() - started
        applied += sum(len(b) for b in work)
        round_ += 1
    during = applied / seconds
    still_running = housekeeper.poll() is None
    output, _ = housekeeper.communicate(timeout=3600)
    log(f"scale: housekeeping {output.strip()}")
    result = {
        "events": {"large": large_events, "small": small_events},
        "apply_per_second": rate,
        "apply_ratio": round(rate["large"] / rate["small"], 3),
        "reads": reads,
        "message_p99_ratio": round(
            reads["large"]["message_p99_ms"] / reads["small"]["message_p99_ms"], 2
        ),
        "status_page_ratio": round(
            reads["large"]["status_page_ms"] / reads["small"]["status_page_ms"], 2
        ),
        "insights": insight,
        "housekeeping": {
            "before_per_second": round(before),
            "during_per_second": round(during),
            "ratio": round(during / before, 3),
            "measured_seconds": round(seconds, 1),
            "outlasted_the_measure": still_running,
            "report": output.strip(),
        },
    }
    log(
        f"scale: apply ratio {result['apply_ratio']}, GET p99 ratio "
        f"{result['message_p99_ratio']}, housekeeping ratio {result['housekeeping']['ratio']}"
    )
    return result
