"""Flower is never exposed beyond loopback without a login; and it tells a task that failed
(dead-lettered, a delivery refused) from one that succeeded, as the worker's log does, on
Redis and on RabbitMQ.

On RabbitMQ, Flower's Broker tab (and /api/queues/length) reads RabbitMQ's management API
(`--broker_api`, FLOWER_BROKER_API; the management plugin on port 15672): without it that tab
is empty, while workers and tasks show as on Redis (they come from the workers' events)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import ON_EACH_BROKER, BrokerProbe
from tests.conftest import API_TOKEN, ROOT, event_now, free_port, wait_for
from tests.receiver import Receiver
from workers.brokers.broker import for_url
from workers.celery_app import APPLY_EVENTS, DELIVER, DELIVERY_QUEUE, QUEUE
from workers.core import store
from workers.flower import flower_argv


@pytest.mark.parametrize("address", ["0.0.0.0", "10.1.2.3", "::"])
def test_flower_beyond_loopback_without_login_refuses_to_start(address):
    with pytest.raises(SystemExit, match="FLOWER_BASIC_AUTH"):
        flower_argv({"FLOWER_ADDRESS": address})


def test_flower_beyond_loopback_with_login_starts():
    argv = flower_argv({"FLOWER_ADDRESS": "0.0.0.0", "FLOWER_BASIC_AUTH": "ops:s3cret"})
    assert "--address=0.0.0.0" in argv


def test_flower_defaults_to_loopback():
    argv = flower_argv({})
    assert "--address=127.0.0.1" in argv and "--port=5555" in argv


# -- what Flower shows of a real worker's tasks ---------------------------------------------


def http_get(url: str) -> bytes | None:
    """The body of a 200 answer, or None (not up yet, or 404: not known yet)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read()
    except (OSError, ValueError):  # urllib.error.URLError and HTTPError are OSErrors
        return None


@pytest.fixture
def flower(task_broker: BrokerProbe, tmp_path: Path) -> Iterator[str]:
    """Flower, started as `make run` starts it (python -m workers.flower), on the test broker;
    its API open, as `make run` leaves it without a login. Returns its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "BROKER_URL": task_broker.url,
        "FLOWER_ADDRESS": "127.0.0.1",
        "FLOWER_PORT": str(port),
        "FLOWER_UNAUTHENTICATED_API": "true",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("FLOWER_BASIC_AUTH", None)
    log_path = tmp_path / "flower.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "workers.flower"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_get(f"{base}/healthcheck") or process.poll() is not None, 60)
        assert process.poll() is None, log_path.read_text()
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def flower_task(flower: str, task_id: str) -> dict[str, Any] | None:
    """The task as Flower shows it (its state from the task events), or None if unknown."""
    body = http_get(f"{flower}/api/task/info/{task_id}")
    return json.loads(body) if body else None


def flower_state(flower: str, task_id: str) -> str | None:
    task = flower_task(flower, task_id)
    return task["state"] if task else None


def flower_counts(flower: str) -> dict[str, int]:
    """Flower's workers page: the task events it counted, all workers together (its Failed
    and Succeeded columns are the task-failed and task-succeeded counts)."""
    body = http_get(f"{flower}/workers?json=1")
    counts: Counter[str] = Counter()
    for worker in json.loads(body or b'{"data": []}')["data"]:
        counts.update({key: value for key, value in worker.items() if key.startswith("task-")})
    return dict(counts)


def flower_workers(flower: str) -> dict[str, Any]:
    """Flower's API of the workers, asked afresh (it inspects them through the broker)."""
    body = http_get(f"{flower}/api/workers?refresh=1")
    return json.loads(body) if body else {}


def flower_queues(flower: str) -> dict[str, int]:
    """Flower's Broker tab: each queue's length, as Flower reads it from the broker."""
    body = http_get(f"{flower}/api/queues/length")
    queues = json.loads(body)["active_queues"] if body else []
    return {queue["name"]: queue["messages"] for queue in queues}


def flower_tasks(flower: str, name: str, state: str) -> list[dict[str, Any]]:
    body = http_get(f"{flower}/api/tasks?taskname={name}&state={state}")
    return list(json.loads(body).values()) if body else []


def worker_lines(worker: Any) -> list[str]:
    """The messages of the worker's JSON log lines."""
    return [
        json.loads(line)["message"]
        for line in worker.output().splitlines()
        if line.startswith("{") and '"message"' in line
    ]


def status_event(message_id: str, status: str, occurred: str) -> dict[str, Any]:
    return {
        "provider": "zapi",
        "message_id": message_id,
        "status": status,
        "raw_status": status.upper(),
        "occurred_at": occurred,
        "received_at": "2026-11-22T10:00:00+00:00",
    }


READ = status_event("F-1", "read", "2026-11-22T10:00:02+00:00")
SENT = status_event("F-1", "sent", "2026-11-22T10:00:01+00:00")
POISON = status_event("F-2", "exploded", "2026-11-22T10:00:00+00:00")


def publish(celery: Any, task_id: str, events: list[dict[str, Any]]) -> None:
    """As the web publishes: on Redis with its in-flight ledger entry, in one MULTI; on
    RabbitMQ confirmed by the broker."""
    broker = for_url(celery.conf.broker_url)
    broker.publish(celery, APPLY_EVENTS, events, task_id=task_id, summary=f"[{task_id}]")


def follow(flower: str, celery: Any) -> None:
    """Publish probes until Flower shows one applied: it listens to the task events by then
    (events sent before it subscribed are gone, on Redis as on RabbitMQ)."""
    for n in range(12):
        publish(celery, f"probe-{n}", [READ])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if flower_state(flower, f"probe-{n}") == "SUCCESS":
                return
            time.sleep(0.2)
    pytest.fail("Flower never showed a probe task")


@pytest.mark.integration
@ON_EACH_BROKER
def test_flower_shows_a_dead_lettered_task_failed_and_a_duplicate_succeeded(
    app, db, task_broker, flower, start_worker
):
    celery = app.extensions["ticks.celery"]
    worker = start_worker()
    follow(flower, celery)  # F-1 read
    # The worker shows in Flower, answering its inspection through the broker.
    workers = wait_for(lambda: flower_workers(flower), timeout=30)
    assert [name for name in workers if name.startswith("w1@")], workers
    if task_broker.name == "redis":  # RabbitMQ's queue lengths need its management API
        assert flower_queues(flower).get(QUEUE) == 0
    publish(celery, "duplicate-1", [READ])  # seen before: nothing to do, and that is normal
    publish(celery, "backward-1", [SENT])  # sent after read: refused, normal too
    publish(celery, "poison-1", [POISON])  # retried, then dead-lettered: a failure
    wait_for(lambda: flower_state(flower, "poison-1") == "FAILURE", timeout=60)
    assert flower_state(flower, "duplicate-1") == "SUCCESS"
    assert flower_state(flower, "backward-1") == "SUCCESS"
    poison = flower_task(flower, "poison-1")
    assert poison is not None and poison["exception"].startswith("DeadLettered(")
    [letter_id] = db.execute("SELECT id FROM dead_letters WHERE task_id = 'poison-1'").fetchone()
    assert f"kept as dead letter {letter_id}" in poison["exception"]
    counts = flower_counts(flower)
    assert counts.get("task-failed") == 1, counts  # Flower's Failed column
    assert counts.get("task-succeeded", 0) >= 3

    lines = worker_lines(worker)
    assert any(
        line.startswith("Task ticks.apply_events[poison-1] raised unexpected: DeadLettered(")
        and "failed: ValidationError(" in line
        for line in lines
    ), lines
    assert not any(line.startswith("Task ticks.apply_events[poison-1] succeeded") for line in lines)
    assert any(line.startswith("Task ticks.apply_events[duplicate-1] succeeded") for line in lines)

    # Settled exactly as before: stored once, acknowledged (on Redis its ledger entry gone),
    # so neither the broker (Redis' visibility timeout, a RabbitMQ requeue) nor the ledger's
    # sweeper ever sends it again.
    assert db.execute(
        "SELECT count(*), min(deliveries) FROM dead_letters WHERE task_id = 'poison-1'"
    ).fetchone() == (1, 1)
    task_broker.assert_all_acknowledged(worker)
    if task_broker.name == "redis":
        assert not task_broker.client.keys("ticks:deliveries:*")  # no redelivery counted
    assert flower_counts(flower).get("task-failed") == 1  # still the one failure


@pytest.mark.integration
def test_a_refused_delivery_fails_in_flower_and_says_why_everywhere(
    app, client, db, broker, flower, start_worker
):
    """SUBSCRIPTIONS_ALLOW_PRIVATE exported in the shell only: `subscriptions add` passes
    (the command sees it), the delivery worker (started without it) refuses every attempt.
    Each refusal is a failed task, and the reason shows in the list, on the status page and
    in the dead deliveries."""
    receiver = Receiver().start()
    try:
        app.config["SUBSCRIPTIONS_ALLOW_PRIVATE"] = True
        runner = app.test_cli_runner()
        added = runner.invoke(args=["subscriptions", "add", receiver.url])
        assert added.exit_code == 0, added.output
        subscription_id = added.output.splitlines()[0]
        worker = start_worker(
            "deliveries",
            pool="threads",
            concurrency=2,
            queues=DELIVERY_QUEUE,
            env={
                "SUBSCRIPTIONS_ALLOW_PRIVATE": "false",
                "DELIVERY_POLL_SECONDS": "0.1",
                "DELIVERY_RETRY_SCHEDULE": "0.3",
                "DELIVERY_CIRCUIT_PAUSE": "0.5",
                "DELIVERY_MAX_AGE": "10",
            },
        )
        with db.transaction():
            store.apply_events(db, [event_now("F-3", "sent")])
        refused = "refused: resolves to a private or loopback address (127.0.0.1)"
        failed = wait_for(lambda: flower_tasks(flower, DELIVER, "FAILURE"), timeout=30)
        assert failed[0]["exception"].startswith("DeliveryFailed('delivery ")
        assert refused in failed[0]["exception"]
        assert flower_tasks(flower, DELIVER, "SUCCESS") == []
        lines = [line for line in worker_lines(worker) if line.startswith("Task ticks.deliver[")]
        assert any("raised expected: DeliveryFailed(" in line and refused in line for line in lines)
        assert not any("succeeded" in line for line in lines), lines

        listed = runner.invoke(args=["subscriptions", "list"]).output
        assert f"last_error={refused}" in listed and "failing (" in listed
        assert "for the delivery worker too (in .env for make run)" in listed
        page = client.get("/", headers={"Authorization": f"Bearer {API_TOKEN}"}).text
        assert refused in page.split('id="subscriptions"')[1].split("</table>")[0]
        dead = wait_for(
            lambda: runner.invoke(args=["subscriptions", "dead", subscription_id]).output,
            timeout=30,
        )
        assert refused in dead
        assert receiver.received == []
        # Each failed task was acknowledged: nothing left on the deliveries queue or held.
        wait_for(lambda: not broker.llen(DELIVERY_QUEUE) and not broker.hlen("unacked"), 10)
    finally:
        receiver.stop()
