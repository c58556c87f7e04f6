"""Database and broker outages: the endpoint stays honest, workers recover by themselves.

Each test runs on Redis and on RabbitMQ. The database outage uses the machine's RabbitMQ;
the broker outages a broker of the test's own (own_broker: an EmbeddedRedis, a private
LocalRabbitMQ node), which they stop, crash and freeze.
"""

from __future__ import annotations

import os
import re
import signal
import time

import psycopg
import pytest

from tests.brokers import ON_EACH_BROKER, ON_EACH_OWN_BROKER
from tests.conftest import wait_for
from tests.faults.helpers import ZAPI_URL, count, events_landed, zapi

pytestmark = pytest.mark.fault
SHORT_BACKOFF = {"TICKS_RETRY_BACKOFF_MAX": "8"}
# 30 s in every run; TICKS_DB_OUTAGE_SECONDS=600 checks that workers outlast a 10-minute one.
OUTAGE_SECONDS = float(os.environ.get("TICKS_DB_OUTAGE_SECONDS", "30"))


@ON_EACH_BROKER
def test_database_down_30s_endpoint_keeps_accepting_and_everything_lands_once(
    client, db, own_postgres, task_broker, start_worker, record_property
):
    worker = start_worker(env=SHORT_BACKOFF)
    for n in range(20):
        assert client.post(ZAPI_URL, json=zapi("SENT", f"DB-{n}")).status_code == 200
    wait_for(lambda: events_landed(db) == 20)
    db.close()
    own_postgres[0].stop()
    stopped_at = time.monotonic()
    sent = 20
    while time.monotonic() - stopped_at < OUTAGE_SECONDS:
        n = sent
        for status in ("SENT", "READ"):  # a repeat and a new status, during the outage
            response = client.post(ZAPI_URL, json=zapi(status, f"DB-{n % 40}"))
            assert response.status_code == 200, response.json
        sent += 1
        time.sleep(0.2)
    ready = client.get("/readyz")  # still accepting: ready, the database named down
    assert ready.status_code == 200 and ready.json["database"] == "unavailable"
    own_postgres[0].start()
    restarted_at = time.monotonic()
    with psycopg.connect(own_postgres[1], autocommit=True) as conn:
        distinct = 40 + min(sent - 20, 40)  # DB-0..39 sent, and read for each one posted
        wait_for(
            lambda: events_landed(conn) == distinct and task_broker.waiting() == 0, timeout=120
        )
        recovered = time.monotonic() - restarted_at
        assert (
            count(
                conn,
                "SELECT count(*) FROM (SELECT DISTINCT provider, message_id, status"
                " FROM status_events) d",
            )
            == distinct
        )
    countdowns = [
        float(s)
        for s in re.findall(
            r"database unavailable for task \S+ \(\w+\): retry \d+ in (\d+\.\d)s", worker.output()
        )
    ]
    assert len(countdowns) >= 3, worker.output()[-3000:]
    assert max(countdowns) > min(countdowns)  # backing off, not a retry storm
    assert max(countdowns) <= 8
    task_broker.assert_all_acknowledged(worker)  # nothing left held by the waiting worker
    record_property("seconds_to_drain_after_restart", round(recovered, 1))
    print(
        f"\n{task_broker.name}, database down {OUTAGE_SECONDS:.0f}s: {2 * (sent - 20)} callbacks "
        "accepted during the outage, "
        f"{distinct} distinct events landed once, {recovered:.1f}s after the restart; "
        f"{len(countdowns)} retries, countdowns {min(countdowns):.0f}s..{max(countdowns):.0f}s"
    )


@ON_EACH_OWN_BROKER
def test_broker_down_answers_503_fast_then_resumes_without_restarts(
    client, db, own_broker, start_worker
):
    worker = start_worker()
    assert client.post(ZAPI_URL, json=zapi("SENT", "BR-before")).status_code == 200
    wait_for(lambda: events_landed(db) == 1)
    own_broker.stop()
    for n in range(10):
        started = time.monotonic()
        response = client.post(ZAPI_URL, json=zapi("SENT", f"BR-down-{n}"))
        assert response.status_code == 503, response.json
        assert response.headers["Retry-After"]
        assert time.monotonic() - started < 2
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json["broker"] == "unavailable"
    own_broker.start()
    wait_for(lambda: client.get("/readyz").status_code == 200, timeout=30)
    for n in range(10):
        assert client.post(ZAPI_URL, json=zapi("READ", f"BR-after-{n}")).status_code == 200
    # The same worker process consumes again after reconnecting: nothing was restarted.
    wait_for(
        lambda: count(db, "SELECT count(*) FROM messages WHERE message_id LIKE 'BR-after-%'") == 10,
        timeout=90,
    )
    assert worker.process.poll() is None
    assert count(db, "SELECT count(*) FROM messages WHERE message_id LIKE 'BR-down-%'") == 0


@ON_EACH_OWN_BROKER
def test_frozen_broker_answers_503_within_2s_then_resumes(client, own_broker):
    """A broker that accepts connections but never answers (SIGSTOP: a hung host, a full
    disk under AOF `always`) must not hold requests longer than a dead one."""
    assert client.post(ZAPI_URL, json=zapi("SENT", "FZ-before")).status_code == 200
    own_broker.freeze()
    try:
        for n in range(5):
            started = time.monotonic()
            response = client.post(ZAPI_URL, json=zapi("SENT", f"FZ-frozen-{n}"))
            assert response.status_code == 503, response.json
            assert time.monotonic() - started < 2
        started = time.monotonic()
        assert client.get("/readyz").status_code == 503
        assert time.monotonic() - started < 2
    finally:
        own_broker.thaw()
    wait_for(lambda: client.post(ZAPI_URL, json=zapi("READ", "FZ-after")).status_code == 200)


@ON_EACH_OWN_BROKER
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["restart", "crash"])
def test_broker_restart_keeps_its_backlog(client, db, own_broker, start_worker, how):
    """500 callbacks answered 200, then the broker stopped or crashed and started again:
    all 500 are still queued, and land. Redis (AOF, appendfsync everysec) may lose the last
    second: the test waits 2 s. RabbitMQ confirms once the quorum queue synced its log to
    disk: no wait."""
    for n in range(500):
        assert client.post(ZAPI_URL, json=zapi("SENT", f"AOF-{n}")).status_code == 200
    if own_broker.name == "redis":
        time.sleep(2)
    own_broker.stop(how)
    own_broker.start()
    # A quorum queue recovers its log as the node starts: it may count up for a moment.
    wait_for(lambda: own_broker.waiting() == 500, timeout=30)
    start_worker()
    wait_for(lambda: events_landed(db) == 500, timeout=120)
