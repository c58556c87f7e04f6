"""Workers killed, poison messages, redelivery: nothing lost, nothing applied twice.

Each test runs on Redis and on RabbitMQ (the machine's; tests/brokers.py). The brokers keep
the promise differently: on Redis, Ticks counts deliveries itself and its in-flight ledger
publishes again what a dead worker took; RabbitMQ's quorum queue requeues a dead consumer's
messages and dead-letters past its delivery limit.
"""

from __future__ import annotations

import time

import pytest

from tests.brokers import ON_EACH_BROKER
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
from workers.brokers.broker import DEAD_LETTER_QUEUE
from workers.celery_app import APPLY_EVENTS
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


# Messages (5 callbacks each) queued for the kill test, and the events landed before the kill.
KILL_VOLUME = {"redis": (2000, 1500), "rabbitmq": (500, 400)}


@ON_EACH_BROKER
def test_worker_killed_mid_drain_loses_nothing_and_doubles_nothing(
    client, db, task_broker, start_worker, record_property
):
    """Callbacks queued (5 per message: 4 statuses and a repeat, shuffled), the prefork worker
    (2 processes) SIGKILLed whole mid-drain; a new worker finishes: every event once, nothing
    left held. On Redis, 10,000 callbacks, killed after about 1,500 events: the dead worker's
    messages come back after the visibility timeout (10 s here) and the ledger's sweep. On
    RabbitMQ, 2,500 callbacks, killed after about 400 events (each publish waits for a
    confirm, so queueing 10,000 alone took ~2.5 minutes, and it proves nothing more): the
    broker requeues the dead worker's unacknowledged messages as its connection drops."""
    messages, landed_before_kill = KILL_VOLUME[task_broker.name]
    post_all(client, lifecycle_callbacks("K", messages))
    wait_for(lambda: task_broker.waiting() == 5 * messages, timeout=10)
    first = start_worker("doomed", pool="prefork", concurrency=2, env=QUICK_REDELIVERY)
    wait_for(lambda: events_landed(db) >= landed_before_kill, timeout=120)
    first.kill_hard()
    landed_at_kill = events_landed(db)
    assert landed_at_kill < 4 * messages  # killed mid-drain, not after it
    killed_at = time.monotonic()
    rescuer = start_worker("rescuer", env=QUICK_REDELIVERY)
    wait_for(lambda: events_landed(db) == 4 * messages, timeout=300)
    recovered = time.monotonic() - killed_at
    assert_exactly_once(db, "K", messages)
    task_broker.assert_all_acknowledged(rescuer)
    assert count(db, "SELECT count(*) FROM dead_letters") == 0
    record_property("events_at_kill", landed_at_kill)
    record_property("seconds_to_finish_after_kill", round(recovered, 1))
    print(
        f"\n{task_broker.name}, worker killed: {5 * messages} callbacks, {4 * messages} distinct "
        f"events; {landed_at_kill} had landed at the kill; all landed {recovered:.1f}s after "
        "it, none doubled"
    )


@ON_EACH_BROKER
def test_poison_message_is_retried_then_dead_lettered_without_blocking_others(
    client, db, app, task_broker, start_worker
):
    worker = start_worker()
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
        timeout=30 + 2 * POISON_RETRIES,
    )
    assert letter[0:3] == ("poison-1", APPLY_EVENTS, bad)
    assert "status" in letter[3]
    assert count(db, "SELECT count(*) FROM messages WHERE message_id = 'P1'") == 0
    # The task failed (Flower's FAILURE, the log's "raised"), and its message was settled:
    # acknowledged, neither requeued (run again) nor, on RabbitMQ, rejected into the
    # dead-letter exchange (stored a second time, its error overwritten).
    wait_for(lambda: "Task ticks.apply_events[poison-1] raised unexpected" in worker.output(), 10)
    assert "Task ticks.apply_events[poison-1] succeeded" not in worker.output()
    task_broker.assert_all_acknowledged(worker)
    assert db.execute("SELECT count(*), min(error) FROM dead_letters").fetchone() == (1, letter[3])


@ON_EACH_BROKER
def test_message_that_kills_its_worker_is_dead_lettered_then_replayed(
    client, db, task_broker, start_worker, database_url
):
    """A message that SIGKILLs its pool process every time: dead-lettered after its third
    death, the 20 behind it applied meanwhile, then replayed once "fixed". On Redis the task
    counts its deliveries (the fourth stores it); on RabbitMQ the quorum queue's delivery
    limit dead-letters it and the worker stores what the dead-letter queue hands it."""
    killer = start_worker("killer", pool="prefork", concurrency=1, app="tests.faults.killer_app")
    post_all(client, [zapi("SENT", "KILL-1")])
    post_all(client, [zapi("SENT", f"behind-{n}") for n in range(20)])
    letter = wait_for(
        lambda: db.execute(
            "SELECT id, task_name, payload, error, deliveries FROM dead_letters"
        ).fetchone(),
        timeout=120,
    )
    assert letter[1] == APPLY_EVENTS
    assert [event["message_id"] for event in letter[2]] == ["KILL-1"]
    if task_broker.name == "redis":
        assert letter[3] == f"the worker died running it {MAX_DELIVERIES} times"
        assert letter[4] == MAX_DELIVERIES + 1  # the delivery that stored it
    else:
        assert "delivery_limit" in letter[3]
        assert letter[4] == MAX_DELIVERIES  # the deliveries RabbitMQ counted
    wait_for(
        lambda: count(db, "SELECT count(*) FROM messages WHERE message_id LIKE 'behind-%'") == 20,
        timeout=30,
    )
    assert killer.process.poll() is None  # the pool lost children, the worker carried on
    assert count(db, "SELECT count(*) FROM status_events WHERE message_id = 'KILL-1'") == 0
    if task_broker.name == "rabbitmq":  # stored, so taken off the dead-letter queue
        wait_for(lambda: task_broker.waiting(DEAD_LETTER_QUEUE) == 0, timeout=10)

    killer.stop()
    start_worker("fixed")
    url = task_broker.url
    listed = deadletters_command(database_url, url, "list")
    assert f"{letter[0]}\t" in listed and f"deliveries={letter[4]}" in listed
    assert "replayed 1 " in deadletters_command(database_url, url, "replay", "--all")
    wait_for(
        lambda: count(
            db, "SELECT count(*) FROM messages WHERE message_id = 'KILL-1' AND status = 'sent'"
        ),
        timeout=30,
    )
    # Replaying again changes nothing: nothing pending, and the same letter by id is idempotent.
    assert deadletters_command(database_url, url, "replay", "--all") == ""
    deadletters_command(database_url, url, "replay", str(letter[0]))
    time.sleep(2)
    assert count(db, "SELECT count(*) FROM status_events WHERE message_id = 'KILL-1'") == 1


@ON_EACH_BROKER
def test_redelivered_and_repeated_callbacks_are_applied_once(
    client, db, app, task_broker, start_worker
):
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
    wait_for(lambda: task_broker.waiting() == 4, timeout=10)
    start_worker()
    wait_for(lambda: task_broker.waiting() == 0, timeout=30)
    time.sleep(1)
    assert count(db, "SELECT count(*) FROM status_events WHERE message_id = 'R-1'") == 1
    assert count(db, "SELECT count(*) FROM messages WHERE message_id = 'R-1'") == 1


def test_poison_retries_and_delivery_bounds_are_small():
    assert 1 <= POISON_RETRIES <= 5
    assert 1 <= MAX_DELIVERIES <= 5


@ON_EACH_BROKER
def test_a_message_a_vanished_consumer_took_is_delivered_again_and_applied_once(
    client, db, task_broker, start_worker
):
    """A consumer takes a message off the queue and vanishes without acknowledging it. On
    Redis nothing of it is left in kombu (taken by BRPOP, never recorded as held): only the
    in-flight ledger knows, and its sweeper publishes it again. On RabbitMQ the broker
    requeues it as the consumer's connection drops."""
    post_all(client, [zapi("SENT", "LOST-1"), zapi("SENT", "KEPT-1")])
    wait_for(lambda: task_broker.waiting() == 2, timeout=10)
    task_broker.take_and_vanish()
    worker = start_worker(env={"TICKS_SWEEP_INTERVAL": "1", "TICKS_SWEEP_MIN_AGE": "2"})
    wait_for(
        lambda: (
            count(db, "SELECT count(*) FROM messages WHERE message_id IN ('LOST-1', 'KEPT-1')") == 2
        ),
        timeout=30,
    )
    task_broker.assert_all_acknowledged(worker)
    assert count(db, "SELECT count(*) FROM status_events") == 2
