"""Workers killed, poison messages, redelivery: nothing lost, nothing applied twice."""

from __future__ import annotations

import time

import pytest

from tests.conftest import wait_for
from tests.faults.helpers import (
    assert_exactly_once,
    count,
    deadletters_command,
    events_landed,
    lifecycle_callbacks,
    post_all,
    zapi,
)
from workers.brokers import ledger
from workers.celery_app import APPLY_EVENTS, QUEUE
from workers.guarded import MAX_DELIVERIES, POISON_RETRIES

pytestmark = pytest.mark.fault
# Short enough that a killed worker's messages come back within the test: those it held
# (Redis's visibility timeout) and one it had taken off the queue but not yet recorded as
# held (the in-flight ledger's sweeper).
QUICK_REDELIVERY = {
    "TICKS_VISIBILITY_TIMEOUT": "10",
    "TICKS_RETRY_BACKOFF_MAX": "5",
    "TICKS_SWEEP_INTERVAL": "2",
    "TICKS_SWEEP_MIN_AGE": "15",
}


def test_worker_killed_mid_drain_loses_nothing_and_doubles_nothing(
    client, db, broker, start_worker, record_property
):
    messages = 2000
    post_all(client, lifecycle_callbacks("K", messages))  # 10,000 callbacks
    assert broker.llen(QUEUE) == 5 * messages
    first = start_worker("doomed", pool="prefork", concurrency=2, env=QUICK_REDELIVERY)
    wait_for(lambda: events_landed(db) >= 1500, timeout=120)
    first.kill_hard()
    landed_at_kill = events_landed(db)
    killed_at = time.monotonic()
    start_worker("rescuer", env=QUICK_REDELIVERY)
    wait_for(
        lambda: (
            events_landed(db) == 4 * messages
            and broker.llen(QUEUE) == 0
            and not broker.hlen("unacked")
        ),
        timeout=300,
    )
    recovered = time.monotonic() - killed_at
    assert_exactly_once(db, "K", messages)
    wait_for(lambda: broker.zcard(ledger.INFLIGHT) == 0, timeout=30)
    record_property("events_at_kill", landed_at_kill)
    record_property("seconds_to_finish_after_kill", round(recovered, 1))
    print(
        f"\nworker killed: 10000 callbacks, {4 * messages} distinct events; {landed_at_kill} "
        f"had landed at the kill; all landed {recovered:.1f}s after it, none doubled"
    )


def test_poison_message_is_retried_then_dead_lettered_without_blocking_others(
    client, db, app, start_worker
):
    start_worker()
    celery = app.extensions["ticks.celery"]
    bad = [
        {
            "provider": "zapi",
            "message_id": "P1",
            "status": "exploded",
            "raw_status": "X",
            "occurred_at": "2026-11-22T10:00:00+00:00",
            "received_at": "2026-11-22T10:00:00+00:00",
        }
    ]
    celery.send_task(APPLY_EVENTS, args=[bad], task_id="poison-1")
    post_all(client, [zapi("SENT", f"after-{n}") for n in range(20)])
    wait_for(
        lambda: count(db, "SELECT count(*) FROM messages WHERE message_id LIKE 'after-%'") == 20,
        timeout=30,
    )
    letter = wait_for(
        lambda: db.execute(
            "SELECT task_id, task_name, payload, error FROM dead_letters"
        ).fetchone(),
        timeout=60,
    )
    assert letter[0:3] == ("poison-1", APPLY_EVENTS, bad)
    assert "status" in letter[3]
    assert count(db, "SELECT count(*) FROM messages WHERE message_id = 'P1'") == 0


def test_message_that_kills_its_worker_is_dead_lettered_then_replayed(
    client, db, start_worker, database_url, redis_url
):
    killer = start_worker("killer", pool="prefork", concurrency=1, app="tests.faults.killer_app")
    post_all(client, [zapi("SENT", "KILL-1")])
    post_all(client, [zapi("SENT", f"behind-{n}") for n in range(20)])
    letter = wait_for(
        lambda: db.execute("SELECT id, error, deliveries FROM dead_letters").fetchone(), timeout=120
    )
    assert letter[1] == f"the worker died running it {MAX_DELIVERIES} times"
    assert letter[2] == MAX_DELIVERIES + 1
    wait_for(
        lambda: count(db, "SELECT count(*) FROM messages WHERE message_id LIKE 'behind-%'") == 20,
        timeout=30,
    )
    assert killer.process.poll() is None  # the pool lost children, the worker carried on
    assert count(db, "SELECT count(*) FROM status_events WHERE message_id = 'KILL-1'") == 0

    killer.stop()
    start_worker("fixed")
    listed = deadletters_command(database_url, redis_url, "list")
    assert f"{letter[0]}\t" in listed and "deliveries=4" in listed
    assert "replayed 1 " in deadletters_command(database_url, redis_url, "replay", "--all")
    wait_for(
        lambda: count(
            db, "SELECT count(*) FROM messages WHERE message_id = 'KILL-1' AND status = 'sent'"
        ),
        timeout=30,
    )
    # Replaying again changes nothing: nothing pending, and the same letter by id is idempotent.
    assert deadletters_command(database_url, redis_url, "replay", "--all") == ""
    deadletters_command(database_url, redis_url, "replay", str(letter[0]))
    time.sleep(2)
    assert count(db, "SELECT count(*) FROM status_events WHERE message_id = 'KILL-1'") == 1


def test_redelivered_and_repeated_callbacks_are_applied_once(client, db, app, start_worker):
    celery = app.extensions["ticks.celery"]
    body = zapi("READ", "R-1")
    post_all(client, [body, body])  # the provider delivers twice
    payload = [
        {
            "provider": "zapi",
            "message_id": "R-1",
            "status": "read",
            "raw_status": "READ",
            "occurred_at": "2024-11-22T12:53:20+00:00",
            "received_at": "2026-11-22T10:00:00+00:00",
        }
    ]
    for _ in range(2):  # the broker delivers one task message twice
        celery.send_task(APPLY_EVENTS, args=[payload], task_id="same-task")
    start_worker()
    wait_for(
        lambda: (
            client.application.extensions["ticks.celery"]
            .connection_for_write()
            .default_channel.client.llen(QUEUE)
            == 0
        ),
        timeout=30,
    )
    time.sleep(1)
    assert count(db, "SELECT count(*) FROM status_events WHERE message_id = 'R-1'") == 1


def test_poison_retries_and_delivery_bounds_are_small():
    assert 1 <= POISON_RETRIES <= 5
    assert 1 <= MAX_DELIVERIES <= 5


def test_a_message_the_broker_lost_is_published_again_and_applied_once(
    client, db, broker, start_worker
):
    post_all(client, [zapi("SENT", "LOST-1"), zapi("SENT", "KEPT-1")])
    # A worker took it off the queue (BRPOP) and died before recording it as held: kombu
    # has no trace of it left, in the queue or in its unacknowledged set.
    assert broker.rpop(QUEUE) is not None
    assert broker.llen(QUEUE) == 1 and not broker.hlen("unacked")
    start_worker(env={"TICKS_SWEEP_INTERVAL": "1", "TICKS_SWEEP_MIN_AGE": "2"})
    wait_for(
        lambda: (
            count(db, "SELECT count(*) FROM messages WHERE message_id IN ('LOST-1', 'KEPT-1')") == 2
        ),
        timeout=30,
    )
    wait_for(lambda: broker.zcard(ledger.INFLIGHT) == 0, timeout=30)
    assert count(db, "SELECT count(*) FROM status_events") == 2
