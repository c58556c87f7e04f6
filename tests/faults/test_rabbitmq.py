"""RabbitMQ as the broker (BROKER_URL=amqp://...): the pipeline and its faults.

Tests that only publish and consume use the machine's RabbitMQ (TEST_AMQP_URL; Ticks' queues
are deleted before and after each). Tests that stop or block RabbitMQ start a node of their
own (tests/faults/servers.py). Without RabbitMQ they skip with the reason; under CI=true
that is a failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import amqp.exceptions
import kombu
import pytest
from flask.testing import FlaskClient

from embedded import RABBITMQ_SERVER, RABBITMQCTL, LocalRabbitCluster, LocalRabbitMQ
from tests.conftest import empty_rabbitmq, make_app, skip_or_fail, wait_for
from tests.faults.helpers import (
    ZAPI_URL,
    assert_exactly_once,
    count,
    deadletters_command,
    events_landed,
    lifecycle_callbacks,
    post_all,
    zapi,
)
from workers.brokers.broker import DEAD_LETTER_QUEUE, MAX_DELIVERIES, QUEUE
from workers.celery_app import APPLY_EVENTS
from workers.guarded import POISON_RETRIES

pytestmark = pytest.mark.fault
# A node of the cluster killed: the seconds within which publishes may be refused (503) while
# the publisher reconnects to another node and the quorum queue elects a new leader.
FAILOVER_SECONDS = 10


def waiting(url: str, queue: str = QUEUE) -> int:
    """Messages ready on a queue (0 when it does not exist yet)."""
    with kombu.Connection(url) as conn:
        try:
            return int(conn.channel().queue_declare(queue, passive=True).message_count)
        except amqp.exceptions.NotFound:
            return 0


@pytest.fixture
def rabbit(rabbitmq_url: str) -> Iterator[str]:
    empty_rabbitmq(rabbitmq_url)
    yield rabbitmq_url
    empty_rabbitmq(rabbitmq_url)


@pytest.fixture
def own_rabbit(tmp_path: Path) -> Iterator[LocalRabbitMQ]:
    if not os.path.exists(RABBITMQ_SERVER):
        skip_or_fail("rabbitmq-server is not installed: a private RabbitMQ node cannot start")
    server = LocalRabbitMQ(tmp_path / "rabbitmq").start()
    yield server
    server.stop(signal.SIGKILL)


def client_for(database_url: str, url: str) -> FlaskClient:
    return make_app(database_url, url).test_client()


def rabbit_worker(start_worker: Any, url: str, name: str = "w1", **options: Any) -> Any:
    env = {**options.pop("env", {}), "BROKER_URL": url}
    return start_worker(name, env=env, **options)


def test_callbacks_are_confirmed_on_a_quorum_queue_then_applied(
    db, rabbit, database_url, start_worker
):
    client = client_for(database_url, rabbit)
    post_all(client, [zapi("SENT", f"RQ-{n}") for n in range(30)])
    # Answered 200 only once RabbitMQ confirmed it: every one is on the queue, no worker yet.
    assert waiting(rabbit) == 30
    with kombu.Connection(rabbit) as conn:
        declared = conn.channel().queue_declare(
            QUEUE, durable=True, arguments={"x-queue-type": "quorum"}, passive=True
        )
    assert declared.queue == QUEUE
    auth = {"Authorization": "Bearer api-secret-for-tests"}
    metrics = client.get("/metrics", headers=auth)
    assert "ticks_queue_messages 30.0" in metrics.text
    assert "ticks_broker_up 1.0" in metrics.text
    assert "ticks_inflight_messages" not in metrics.text  # no ledger on RabbitMQ
    assert client.get("/readyz").status_code == 200
    page = client.get("/", headers=auth)
    assert page.status_code == 200
    assert "30 <small>task messages</small>" in page.text
    assert "kept by the broker" in page.text
    worker = rabbit_worker(start_worker, rabbit)
    wait_for(lambda: events_landed(db) == 30, timeout=60)
    wait_for(lambda: waiting(rabbit) == 0, timeout=10)
    assert "redis" not in worker.output().lower().replace("redis_url", "")
    assert count(db, "SELECT count(*) FROM dead_letters") == 0


def test_a_deleted_queue_is_refused_not_confirmed_into_nowhere(db, rabbit, database_url):
    """A queue deleted behind the web's back: publishing to it would be confirmed and
    dropped. Published as mandatory, it is returned: 503 (retried), then declared again."""
    client = client_for(database_url, rabbit)
    post_all(client, [zapi("SENT", "DQ-1")])
    with kombu.Connection(rabbit) as conn:
        conn.channel().queue_delete(QUEUE)
    assert client.post(ZAPI_URL, json=zapi("SENT", "DQ-2")).status_code == 503
    post_all(client, [zapi("SENT", "DQ-3")])
    assert waiting(rabbit) == 1


def test_worker_killed_mid_drain_loses_nothing_and_doubles_nothing(
    db, rabbit, database_url, start_worker, record_property
):
    messages = 2000
    client = client_for(database_url, rabbit)
    post_all(client, lifecycle_callbacks("RK", messages))  # 10,000 callbacks
    assert waiting(rabbit) == 5 * messages
    first = rabbit_worker(start_worker, rabbit, "doomed", pool="prefork", concurrency=2)
    wait_for(lambda: events_landed(db) >= 1500, timeout=120)
    first.kill_hard()
    landed_at_kill = events_landed(db)
    killed_at = time.monotonic()
    rabbit_worker(start_worker, rabbit, "rescuer")
    # RabbitMQ requeues the dead worker's unacknowledged messages as its connection drops:
    # no visibility timeout, no ledger, no sweeper.
    wait_for(lambda: events_landed(db) == 4 * messages and waiting(rabbit) == 0, timeout=300)
    recovered = time.monotonic() - killed_at
    assert_exactly_once(db, "RK", messages)
    assert count(db, "SELECT count(*) FROM dead_letters") == 0
    record_property("seconds_to_finish_after_kill", round(recovered, 1))
    print(
        f"\nRabbitMQ, worker killed: {landed_at_kill} of {4 * messages} events had landed; "
        f"all landed {recovered:.1f}s after the kill, none doubled"
    )


def test_poison_message_is_dead_lettered_without_blocking_others(
    db, rabbit, database_url, start_worker
):
    worker = rabbit_worker(start_worker, rabbit)
    app = make_app(database_url, rabbit)
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
    app.extensions["ticks.celery"].send_task(APPLY_EVENTS, args=[bad], task_id="poison-1")
    post_all(app.test_client(), [zapi("SENT", f"after-{n}") for n in range(20)])
    wait_for(
        lambda: count(db, "SELECT count(*) FROM messages WHERE message_id LIKE 'after-%'") == 20,
        timeout=30,
    )
    letter = wait_for(
        lambda: db.execute("SELECT task_id, payload, error FROM dead_letters").fetchone(),
        timeout=30 + 2 * POISON_RETRIES,
    )
    assert letter[0:2] == ("poison-1", bad)
    assert "status" in letter[2]
    # The task failed (Flower's FAILURE, the log's "raised"), and its message was settled as
    # before: acknowledged, not rejected into the dead-letter exchange (stored a second time,
    # its error overwritten) nor requeued (run again).
    wait_for(lambda: "Task ticks.apply_events[poison-1] raised unexpected" in worker.output(), 10)
    assert "Task ticks.apply_events[poison-1] succeeded" not in worker.output()
    worker.stop()  # what it still held unacknowledged would go back to the queue now
    time.sleep(1)
    assert waiting(rabbit) == 0 and waiting(rabbit, DEAD_LETTER_QUEUE) == 0
    assert db.execute("SELECT count(*), min(error) FROM dead_letters").fetchone() == (1, letter[2])


def test_message_that_kills_its_worker_is_dead_lettered_by_the_delivery_limit(
    db, rabbit, database_url, start_worker
):
    killer = rabbit_worker(
        start_worker, rabbit, "killer", pool="prefork", concurrency=1, app="tests.faults.killer_app"
    )
    client = client_for(database_url, rabbit)
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
    assert "delivery_limit" in letter[3]
    assert letter[4] == MAX_DELIVERIES
    wait_for(
        lambda: count(db, "SELECT count(*) FROM messages WHERE message_id LIKE 'behind-%'") == 20,
        timeout=30,
    )
    assert killer.process.poll() is None  # the pool lost children, the worker carried on
    assert count(db, "SELECT count(*) FROM status_events WHERE message_id = 'KILL-1'") == 0
    wait_for(lambda: waiting(rabbit, DEAD_LETTER_QUEUE) == 0, timeout=10)

    killer.stop()
    rabbit_worker(start_worker, rabbit, "fixed")
    assert "replayed 1 " in deadletters_command(database_url, rabbit, "replay", "--all")
    wait_for(
        lambda: count(
            db, "SELECT count(*) FROM messages WHERE message_id = 'KILL-1' AND status = 'sent'"
        ),
        timeout=30,
    )


def test_rabbitmq_down_answers_503_fast_then_resumes_without_restarts(
    db, own_rabbit, database_url, start_worker
):
    client = client_for(database_url, own_rabbit.url)
    worker = rabbit_worker(start_worker, own_rabbit.url)
    post_all(client, [zapi("SENT", "RB-before")])
    wait_for(lambda: events_landed(db) == 1, timeout=30)
    own_rabbit.stop()
    for n in range(10):
        started = time.monotonic()
        response = client.post(ZAPI_URL, json=zapi("SENT", f"RB-down-{n}"))
        assert response.status_code == 503, response.json
        assert response.headers["Retry-After"]
        assert time.monotonic() - started < 2
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json["broker"] == "unavailable"
    own_rabbit.start()
    wait_for(lambda: client.get("/readyz").status_code == 200, timeout=30)
    post_all(client, [zapi("READ", f"RB-after-{n}") for n in range(10)])
    # The same worker process consumes again after reconnecting: nothing was restarted.
    wait_for(
        lambda: count(db, "SELECT count(*) FROM messages WHERE message_id LIKE 'RB-after-%'") == 10,
        timeout=90,
    )
    assert worker.process.poll() is None
    assert count(db, "SELECT count(*) FROM messages WHERE message_id LIKE 'RB-down-%'") == 0


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["restart", "crash"])
def test_rabbitmq_restart_keeps_its_confirmed_backlog(
    db, own_rabbit, database_url, start_worker, how
):
    client = client_for(database_url, own_rabbit.url)
    post_all(client, [zapi("SENT", f"RQB-{n}") for n in range(500)])
    # Confirmed means on disk (a quorum queue confirms once its log is synced): no wait.
    own_rabbit.stop(how)
    own_rabbit.start()
    # The quorum queue recovers its log as the node starts: it may count up for a moment.
    wait_for(lambda: waiting(own_rabbit.url) == 500, timeout=30)
    rabbit_worker(start_worker, own_rabbit.url)
    wait_for(lambda: events_landed(db) == 500, timeout=120)


def test_a_blocked_rabbitmq_is_answered_503_within_2s(db, tmp_path, database_url):
    """A memory (or disk) alarm blocks publishers: RabbitMQ reads nothing and confirms
    nothing. The endpoint must not hold the provider, nor answer 200."""
    if not os.path.exists(RABBITMQ_SERVER):
        skip_or_fail("rabbitmq-server is not installed: a private RabbitMQ node cannot start")
    server = LocalRabbitMQ(
        tmp_path / "rabbitmq", config="vm_memory_high_watermark.absolute = 1\n"
    ).start()
    try:
        client = client_for(database_url, server.url)
        for n in range(3):
            started = time.monotonic()
            response = client.post(ZAPI_URL, json=zapi("SENT", f"BLK-{n}"))
            assert response.status_code == 503, response.json
            assert time.monotonic() - started < 2
        # Readiness once answered 200 here (the node opens connections and channels under an
        # alarm): a load balancer kept sending callbacks to a web that refused them all.
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "refusing publishes" in ready.json["error"]
        subprocess.run(  # the alarm clears: publishes and readiness come back
            [RABBITMQCTL, "-n", server.name, "set_vm_memory_high_watermark", "0.8"],
            env={**os.environ, "HOME": str(server.home)},
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=30)
        assert client.post(ZAPI_URL, json=zapi("SENT", "BLK-after")).status_code == 200
    finally:
        server.stop(signal.SIGKILL)


def test_a_quorum_queue_on_three_nodes_survives_losing_one_under_load(
    db, tmp_path, database_url, start_worker
):
    """The cluster of production in small: three nodes, the queue replicated on each; the
    node web and worker are connected to is killed while callbacks arrive. Publishers and
    the worker move to another node; everything answered 200 lands exactly once."""
    if not os.path.exists(RABBITMQ_SERVER):
        skip_or_fail("rabbitmq-server is not installed: a private RabbitMQ cluster cannot start")
    cluster = LocalRabbitCluster(tmp_path / "cluster").start()
    try:
        client = client_for(database_url, cluster.url)
        rabbit_worker(start_worker, cluster.url)
        answers: dict[str, tuple[float, int]] = {}  # message id -> (seconds after the kill, code)
        started = time.monotonic()
        killed_at = None
        n = 0
        while time.monotonic() - started < 25:
            if killed_at is None and time.monotonic() - started > 5:
                cluster.nodes[0].stop(signal.SIGKILL)
                killed_at = time.monotonic()
            message_id = f"CL-{n}"
            code = client.post(ZAPI_URL, json=zapi("SENT", message_id)).status_code
            since = time.monotonic() - killed_at if killed_at is not None else -1.0
            answers[message_id] = (since, code)
            n += 1
            time.sleep(0.01)
        accepted = {mid for mid, (_, code) in answers.items() if code == 200}
        assert {code for _, code in answers.values()} <= {200, 503}
        # It kept accepting: refusals (503, retried by the provider) only while the publisher
        # found the next node and the queue elected a new leader, then none.
        refused = sorted(since for since, code in answers.values() if code != 200)
        assert all(since < FAILOVER_SECONDS for since in refused), refused
        after = [code for since, code in answers.values() if since >= FAILOVER_SECONDS]
        assert after and set(after) == {200}
        wait_for(
            lambda: (
                count(db, "SELECT count(*) FROM messages WHERE message_id LIKE 'CL-%'")
                >= len(accepted)
            ),
            timeout=120,
        )
        landed = {
            row[0]
            for row in db.execute("SELECT message_id FROM messages WHERE message_id LIKE 'CL-%'")
        }
        assert accepted <= landed
        assert count(db, "SELECT count(*) FROM status_events WHERE message_id LIKE 'CL-%'") == len(
            landed
        )
        window = f"{refused[0]:.1f}-{refused[-1]:.1f} s after the kill" if refused else "none"
        print(
            f"\nRabbitMQ cluster, a node killed under load: {len(accepted)} of {len(answers)} "
            f"answered 200; {len(refused)} refused ({window}); all landed once"
        )
    finally:
        cluster.stop()


def test_outbound_webhooks_are_delivered_through_rabbitmq(db, rabbit, database_url, start_worker):
    from tests.receiver import Receiver, verified
    from workers.celery_app import DELIVERY_QUEUE

    receiver = Receiver().start()
    try:
        app = make_app(database_url, rabbit, SUBSCRIPTIONS_ALLOW_PRIVATE=True)
        added = app.test_cli_runner().invoke(args=["subscriptions", "add", receiver.url])
        _, secret = added.output.splitlines()
        rabbit_worker(start_worker, rabbit)
        rabbit_worker(
            start_worker,
            rabbit,
            "d1",
            pool="threads",
            concurrency=2,
            queues=DELIVERY_QUEUE,
            env={"SUBSCRIPTIONS_ALLOW_PRIVATE": "true", "DELIVERY_POLL_SECONDS": "0.1"},
        )
        client = app.test_client()
        for status in ("SENT", "READ"):
            assert client.post(ZAPI_URL, json=zapi(status, "RABBIT-OUT")).status_code == 200
        wait_for(lambda: len(receiver.delivered()) == 2, 60)
        got = receiver.delivered()
        assert [r.document["data"]["status"] for r in got] == ["sent", "read"]
        assert all(verified(secret, r) for r in got)
    finally:
        receiver.stop()
