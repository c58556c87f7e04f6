"""End to end: HTTP -> the broker -> real Celery worker processes -> Postgres -> read API.

Every test through a worker runs on Redis and on RabbitMQ (ON_EACH_BROKER, tests/brokers.py).
"""

from __future__ import annotations

import json
import random

import pytest

from schemas.registry import PROVIDERS
from schemas.statuses import next_status
from tests.brokers import ON_EACH_BROKER
from tests.conftest import (
    API_TOKEN,
    WEBHOOK_TOKENS,
    fixture_names,
    free_port,
    load_fixture,
    wait_for,
)

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
# What each seed alone leaves a message in (read_by_me never sets a status).
SEED_STATUS = {
    ("zapi", "seed_sent"): "sent",
    ("zapi", "seed_received"): "received",
    ("zapi", "seed_read"): "read",
    ("zapi", "seed_read_by_me"): None,
    ("zapi", "seed_read_self"): None,
    ("zapi", "seed_played"): "played",
    ("plug", "seed_message_received_2022"): "received",
    ("greenapi", "seed_failed"): "failed",
}


def post(client, provider, body):
    return client.post(f"/webhooks/{provider}/{WEBHOOK_TOKENS[provider][0]}", json=body)


def read_message(client, provider, message_id):
    response = client.get(f"/messages/{provider}/{message_id}", headers=AUTH)
    return response.json if response.status_code == 200 else None


def test_seed_list_is_complete():
    seeds = {(p, n) for p in PROVIDERS for n in fixture_names(p) if n.startswith("seed_")}
    assert seeds == set(SEED_STATUS)


@ON_EACH_BROKER
@pytest.mark.parametrize(("provider", "name"), list(SEED_STATUS))
def test_every_seed_example_lands_end_to_end(client, start_worker, provider, name):
    start_worker()
    body = load_fixture(provider, name)
    assert post(client, provider, body).status_code == 200
    message_id = (body.get("ids") or [body.get("idMessage")])[0]
    message = wait_for(lambda: read_message(client, provider, message_id))
    assert message["status"] == SEED_STATUS[(provider, name)]
    assert len(message["events"]) == 1


@ON_EACH_BROKER
def test_zapi_lifecycle_out_of_order_with_duplicates(client, task_broker, start_worker):
    worker = start_worker()
    bodies = [
        load_fixture("zapi", n)
        for n in (
            "seed_read",
            "seed_sent",
            "seed_played",
            "seed_received",
            "seed_read",
            "seed_read_self",
        )
    ]
    request_ids = []
    for body in bodies:
        response = post(client, "zapi", body)
        assert response.status_code == 200
        request_ids.append(response.headers["X-Request-Id"])
    message = wait_for(
        lambda: (
            (m := read_message(client, "zapi", "999999999999999999999"))
            and len(m["events"]) == 5
            and m
        )
    )
    assert message["status"] == "played"
    assert message["read_by_me_at"] is not None
    assert all(message[f"{s}_at"] for s in ("sent", "received", "read", "played"))
    # Every message finished: nothing waiting, held, or left in Redis' in-flight ledger.
    task_broker.assert_all_acknowledged(worker)
    logged = worker.output()
    assert "5544999999999" not in logged  # the phone number never
    # One JSON line per applied batch, carrying the request ids the endpoint answered with.
    applied = [
        record
        for line in logged.splitlines()
        if line.startswith("{")
        and (record := json.loads(line)).get("message", "").startswith("applied")
    ]
    assert applied and all(r["task_name"] == "ticks.apply_events" and r["task_id"] for r in applied)
    assert sorted(rid for r in applied for rid in r["request_ids"]) == sorted(request_ids)
    assert {mid for r in applied for mid in r["message_ids"]} == {"999999999999999999999"}


@ON_EACH_BROKER
def test_quarantined_body_lands_in_postgres(client, db, start_worker):
    start_worker()
    body = load_fixture("greenapi", "sent") | {"status": "vanished"}
    assert post(client, "greenapi", body).json["quarantined"] is True
    row = wait_for(
        lambda: db.execute("SELECT provider, reason, errors, raw_body FROM quarantine").fetchone()
    )
    assert row[0:2] == ("greenapi", "validation")
    assert "status" in row[2]
    assert '"vanished"' in row[3]


@ON_EACH_BROKER
def test_two_worker_processes_racing_on_one_message(client, db, task_broker, start_worker):
    rng = random.Random(7)
    statuses = ["SENT", "RECEIVED", "READ", "PLAYED", "READ_BY_ME"]
    ids = ["RACE-1", "RACE-2"]
    bodies = [
        {
            "status": s,
            "ids": ids,
            "momment": 1732280000000 + i,
            "phone": "5511987654321",
            "type": "MessageStatusCallback",
        }
        for i, s in enumerate(statuses)
    ] * 20
    rng.shuffle(bodies)
    for body in bodies:  # queued before the workers start, so both race on the backlog
        assert post(client, "zapi", body).status_code == 200
    first, second = start_worker("w1", wait=False), start_worker("w2", wait=False)
    first.wait_ready()
    second.wait_ready()
    wait_for(
        lambda: db.execute("SELECT count(*) FROM status_events").fetchone()[0] == 10, timeout=60
    )
    wait_for(lambda: task_broker.waiting() == 0, timeout=60)
    for message_id in ids:
        message = read_message(client, "zapi", message_id)
        assert message["status"] == "played"
        assert len(message["events"]) == len(statuses)
    assert db.execute("SELECT count(*) FROM status_events").fetchone() == (10,)
    both = first.output() + second.output()
    assert "ticks.apply_events" in first.output() and "ticks.apply_events" in second.output(), both


@ON_EACH_BROKER
def test_failed_then_sent_through_workers_stays_failed(client, start_worker):
    start_worker()
    failed = load_fixture("greenapi", "no_account")
    sent = failed | {"status": "sent", "timestamp": failed["timestamp"] - 5}
    for body in (failed, sent):
        assert post(client, "greenapi", body).status_code == 200
    message = wait_for(
        lambda: (
            (m := read_message(client, "greenapi", failed["idMessage"]))
            and len(m["events"]) == 2
            and m
        )
    )
    assert message["status"] == next_status(next_status(None, "failed"), "sent") == "failed"
    assert message["failure_reason"] == "noAccount"


@ON_EACH_BROKER
def test_worker_metrics_add_up_every_pool_process(client, start_worker):
    import urllib.request

    port = free_port()
    start_worker(pool="prefork", concurrency=2, env={"WORKER_METRICS_PORT": str(port)})
    for n in range(12):
        body = {**load_fixture("zapi", "seed_sent"), "ids": [f"WM{n:02d}"]}
        assert post(client, "zapi", body).status_code == 200
    wait_for(lambda: read_message(client, "zapi", "WM11"))

    def applied() -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        values = [
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith('ticks_events_applied_total{outcome="applied"}')
        ]
        return sum(values)  # no line until a pool process has counted its first batch

    wait_for(lambda: applied() == 12)
