"""The in-flight ledger on a real Redis: what counts as lost, and what the endpoint records."""

from __future__ import annotations

import json
import time

from tests.conftest import load_fixture
from workers.brokers import ledger
from workers.celery_app import QUEUE


def kombu_message(task_id: str) -> str:
    return json.dumps({"body": "", "headers": {"id": task_id, "task": "ticks.apply_events"}})


def record(broker, task_id: str, payload: list) -> None:
    pipe = broker.pipeline()
    ledger.record(pipe, task_id, "ticks.apply_events", payload)
    pipe.execute()


def age(broker, task_id: str, seconds: float) -> None:
    broker.zadd(ledger.INFLIGHT, {task_id: time.time() - seconds})


def test_only_unfinished_messages_that_left_the_queue_and_nobody_holds_are_lost(broker):
    for task_id in ("gone", "held", "queued", "young"):
        record(broker, task_id, [])
    for task_id in ("gone", "held"):
        age(broker, task_id, 600)
    age(broker, "queued", 300)  # the oldest message still waiting: published 300 s ago
    broker.lpush(QUEUE, kombu_message("queued"))
    broker.hset(
        ledger.KOMBU_UNACKED, "tag-1", json.dumps([json.loads(kombu_message("held")), "", "ticks"])
    )
    assert ledger.lost(broker, QUEUE, min_age=60) == ["gone"]


def test_a_message_published_after_the_oldest_queued_one_is_not_lost(broker):
    record(broker, "first", [])
    record(broker, "second", [])
    age(broker, "first", 600)
    age(broker, "second", 500)
    broker.lpush(QUEUE, kombu_message("first"))  # still waiting, so "second" is still behind it
    assert ledger.lost(broker, QUEUE, min_age=60) == []


def test_finished_messages_leave_the_ledger(broker):
    record(broker, "done", [1])
    pipe = broker.pipeline()
    ledger.finish(pipe, "done")
    pipe.execute()
    assert broker.zcard(ledger.INFLIGHT) == 0 and broker.hlen(ledger.MESSAGES) == 0


def test_the_endpoint_records_each_message_before_it_is_acknowledged(client, broker):
    response = client.post("/webhooks/zapi/zapi-secret-one", json=load_fixture("zapi", "seed_sent"))
    assert response.status_code == 200
    [task_id] = [m.decode() for m in broker.zrange(ledger.INFLIGHT, 0, -1)]
    entry = json.loads(broker.hget(ledger.MESSAGES, task_id))
    assert entry["task"] == "ticks.apply_events"
    assert entry["payload"][0]["message_id"] == "999999999999999999999"
