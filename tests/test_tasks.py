"""The tasks, run in-process against the real test database: outages, poison, deliveries."""

from __future__ import annotations

from types import SimpleNamespace

import psycopg
import pytest

from workers import guarded
from workers.brokers.broker import RabbitBroker, RedisBroker
from workers.celery_app import make_celery
from workers.core import store
from workers.guarded import MAX_DELIVERIES, POISON_RETRIES
from workers.tasks import apply_events

EVENT = {
    "provider": "zapi",
    "message_id": "T-1",
    "status": "read",
    "raw_status": "READ",
    "occurred_at": "2026-11-22T10:00:00+00:00",
    "received_at": "2026-11-22T10:00:01+00:00",
}


@pytest.fixture
def quiet(monkeypatch, db):
    """No broker for delivery counts, no real sleeping; record every wait."""
    waits: list[float] = []
    monkeypatch.setattr(guarded.BROKER, "deliveries", lambda celery, request: 1)
    monkeypatch.setattr(guarded.BROKER, "settle", lambda celery, task_id, finished: None)
    monkeypatch.setattr(guarded.SHUTTING_DOWN, "wait", lambda seconds: waits.append(seconds))
    monkeypatch.setattr(guarded, "POISON_RETRY_SECONDS", 0)
    return waits


def failing_then_working(monkeypatch, failures: int, error: Exception) -> list[int]:
    calls = []
    real = store.apply_events

    def flaky(conn, events, refused=None):
        calls.append(1)
        if len(calls) <= failures:
            raise error
        return real(conn, events, refused)

    monkeypatch.setattr(store, "apply_events", flaky)
    return calls


def statuses(db) -> list[tuple]:
    return db.execute("SELECT message_id, status FROM messages").fetchall()


def test_transient_errors_are_waited_out_with_growing_backoff(monkeypatch, quiet, db):
    calls = failing_then_working(monkeypatch, 6, psycopg.OperationalError("server closed"))
    result = apply_events.apply(args=[[EVENT]])
    assert result.state == "SUCCESS"
    assert len(calls) == 7
    assert len(quiet) == 6
    assert quiet[-1] > quiet[0]
    assert statuses(db) == [("T-1", "read")]


def test_shutdown_during_an_outage_hands_the_message_back(monkeypatch, quiet, db):
    failing_then_working(monkeypatch, 100, psycopg.OperationalError("down"))
    monkeypatch.setattr(guarded.SHUTTING_DOWN, "wait", lambda seconds: True)
    assert apply_events.apply(args=[[EVENT]]).state == "REJECTED"
    assert statuses(db) == []


def test_an_outage_longer_than_the_hold_limit_hands_the_message_back(monkeypatch, quiet, db):
    failing_then_working(monkeypatch, 100, psycopg.OperationalError("down"))
    monkeypatch.setattr(guarded, "HOLD_LIMIT", -1)
    assert apply_events.apply(args=[[EVENT]]).state == "REJECTED"


def test_other_errors_are_retried_then_dead_lettered(monkeypatch, quiet, db):
    calls = failing_then_working(monkeypatch, 100, ValueError("bad data"))
    result = apply_events.apply(args=[[EVENT]], task_id="poison-task")
    # Failed, not a success returning False: Flower and the log say so. Its message is still
    # settled (test_flower.py, through a real worker): kept in dead_letters, acknowledged.
    assert result.state == "FAILURE"
    assert isinstance(result.result, guarded.DeadLettered)
    assert len(calls) == POISON_RETRIES + 1
    row = db.execute("SELECT id, task_id, payload, error, deliveries FROM dead_letters").fetchone()
    assert row[1:] == ("poison-task", [EVENT], "ValueError('bad data')", 1)
    assert str(result.result) == f"failed: ValueError('bad data'); kept as dead letter {row[0]}"
    assert isinstance(result.result.__cause__, ValueError)  # its traceback, in the log


def test_a_dead_lettered_message_is_settled_in_the_ledger(monkeypatch, quiet, db):
    settled = []
    monkeypatch.setattr(
        guarded.BROKER, "settle", lambda celery, task_id, finished: settled.append(finished)
    )
    failing_then_working(monkeypatch, 100, ValueError("bad data"))
    assert apply_events.apply(args=[[EVENT]]).state == "FAILURE"
    assert settled == [True]  # finished: its ledger entry goes, the sweeper never resends it


def test_a_message_delivered_too_often_is_dead_lettered_without_running(monkeypatch, quiet, db):
    calls = failing_then_working(monkeypatch, 0, ValueError("unused"))
    monkeypatch.setattr(guarded.BROKER, "deliveries", lambda celery, request: MAX_DELIVERIES + 1)
    assert apply_events.apply(args=[[EVENT]], task_id="killer-task").state == "FAILURE"
    assert calls == []
    error = db.execute("SELECT error FROM dead_letters WHERE task_id = 'killer-task'").fetchone()
    assert error == (f"the worker died running it {MAX_DELIVERIES} times",)


def test_dead_lettering_waits_out_an_outage_too(monkeypatch, quiet, db):
    failing_then_working(monkeypatch, 100, ValueError("bad data"))
    real = store.record_dead_letter
    attempts = []

    def flaky_record(conn, letter):
        attempts.append(1)
        if len(attempts) < 3:
            raise psycopg.OperationalError("down")
        return real(conn, letter)

    monkeypatch.setattr(store, "record_dead_letter", flaky_record)
    apply_events.apply(args=[[EVENT]])
    assert len(attempts) == 3
    assert db.execute("SELECT count(*) FROM dead_letters").fetchone() == (1,)


def test_one_log_line_per_batch_and_phones_masked_in_the_detail(quiet, db, caplog):
    events = [
        {**EVENT, "message_id": f"T-{n}", "phone": "5511987654321", "request_id": f"req{n}"}
        for n in range(3)
    ]
    with caplog.at_level("DEBUG", logger="workers.tasks"):
        apply_events.apply(args=[events])
    [summary] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("applied")]
    assert "events=3 applied=3" in summary
    assert "message_ids=T-0,T-1,T-2" in summary
    assert "request_ids=req0,req1,req2" in summary
    assert "5511987654321" not in caplog.text
    assert caplog.text.count("phone=*********4321") == 3


@pytest.mark.parametrize(
    ("delivery_info", "expected"),
    [(None, [1, 1]), ({"redelivered": False}, [1, 1]), ({"redelivered": True}, [2, 3])],
)
def test_redis_counts_only_redelivered_messages(broker, redis_url, delivery_info, expected):
    celery = make_celery(redis_url)
    request = SimpleNamespace(id="t-1", delivery_info=delivery_info)
    seen = [RedisBroker().deliveries(celery, request) for _ in range(2)]
    assert seen == expected
    assert broker.exists("ticks:deliveries:t-1") == (expected[0] > 1)
    RedisBroker().settle(celery, "t-1", finished=True)
    assert not broker.exists("ticks:deliveries:t-1")


@pytest.mark.parametrize(("headers", "expected"), [({}, 1), ({"x-delivery-count": 2}, 3)])
def test_rabbitmq_deliveries_come_from_the_quorum_queue_count(headers, expected):
    request = SimpleNamespace(id="t-1", headers=headers, delivery_info={"redelivered": True})
    assert RabbitBroker().deliveries(None, request) == expected  # type: ignore[arg-type]


def sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_applied_batches_are_counted_in_the_worker_metrics(quiet, db):
    sent = {**EVENT, "message_id": "M-1", "status": "sent", "raw_status": "SENT"}
    read = {**EVENT, "message_id": "M-1"}
    failed = {**EVENT, "message_id": "M-1", "status": "failed", "raw_status": "failed"}
    before = {
        "applied": sample("ticks_events_applied_total", outcome="applied"),
        "duplicate": sample("ticks_events_applied_total", outcome="duplicate"),
        "refused": sample("ticks_events_applied_total", outcome="refused"),
        "pair": sample("ticks_transitions_refused_total", from_status="read", to_status="failed"),
        "failed": sample("ticks_failed_events_total", provider="zapi"),
        "batches": sample("ticks_apply_batch_events_count"),
        "events": sample("ticks_apply_batch_events_sum"),
    }
    apply_events.apply(args=[[sent, read]])
    apply_events.apply(args=[[read, failed]])  # read: a duplicate; failed after read: refused
    assert sample("ticks_events_applied_total", outcome="applied") == before["applied"] + 2
    assert sample("ticks_events_applied_total", outcome="duplicate") == before["duplicate"] + 1
    assert sample("ticks_events_applied_total", outcome="refused") == before["refused"] + 1
    assert (
        sample("ticks_transitions_refused_total", from_status="read", to_status="failed")
        == before["pair"] + 1
    )
    assert sample("ticks_failed_events_total", provider="zapi") == before["failed"] + 1
    assert sample("ticks_apply_batch_events_count") == before["batches"] + 2
    assert sample("ticks_apply_batch_events_sum") == before["events"] + 4


def test_retries_and_dead_letters_are_counted(monkeypatch, quiet, db):
    outage = sample("ticks_task_retries_total", reason="database_unavailable")
    errors = sample("ticks_task_retries_total", reason="error")
    letters = sample("ticks_dead_letters_total")
    failing_then_working(monkeypatch, 2, psycopg.OperationalError("down"))
    apply_events.apply(args=[[EVENT]])
    assert sample("ticks_task_retries_total", reason="database_unavailable") == outage + 2
    failing_then_working(monkeypatch, 100, ValueError("bad data"))
    apply_events.apply(args=[[{**EVENT, "message_id": "T-9"}]])
    assert sample("ticks_task_retries_total", reason="error") == errors + POISON_RETRIES
    assert sample("ticks_dead_letters_total") == letters + 1


def test_a_letter_rabbitmq_dead_lettered_is_announced_as_a_failed_task(db):
    """RabbitMQ dead-letters a message that killed its worker MAX_DELIVERIES times: no worker
    ran it to its end, so the worker that stores it sends its task-failed event (Flower)."""
    sent: list[tuple[str, dict]] = []
    dispatcher = SimpleNamespace(
        enabled=True, send=lambda kind, **fields: sent.append((kind, fields))
    )
    step = guarded.DeadLetterConsumer(SimpleNamespace())
    step.consumer = SimpleNamespace(event_dispatcher=dispatcher)
    acked: list[bool] = []
    headers = {
        "id": "killer-task",
        "task": "ticks.apply_events",
        "x-death": [{"reason": "delivery_limit"}],
        "x-delivery-count": MAX_DELIVERIES,
    }
    step.on_message(
        [[EVENT], {}, {}], SimpleNamespace(headers=headers, ack=lambda: acked.append(True))
    )
    [letter_id] = db.execute("SELECT id FROM dead_letters WHERE task_id = 'killer-task'").fetchone()
    assert acked == [True]
    [(kind, fields)] = sent
    assert (kind, fields["uuid"]) == ("task-failed", "killer-task")
    assert fields["exception"].startswith("DeadLettered('failed: RabbitMQ dead-lettered it")
    assert f"kept as dead letter {letter_id}" in fields["exception"]
