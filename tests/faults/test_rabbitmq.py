"""What only RabbitMQ has: the quorum queue and its confirms, the mandatory publish, a node
blocked by its memory alarm, a three-node cluster.

Everything Ticks promises on either broker (the pipeline, workers killed, poison, the delivery
limit, redelivery, the broker down, frozen, restarted and crashed, outbound webhooks) runs on
both: the tests marked ON_EACH_BROKER / ON_EACH_OWN_BROKER (tests/brokers.py). Tests here
that only publish and consume use the machine's RabbitMQ (TEST_AMQP_URL; Ticks' queues purged
before and after each); those that block it or kill a node start nodes of their own. Without
RabbitMQ they skip with the reason; under CI=true that is a failure.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Any

import kombu
import pytest

from embedded import RABBITMQ_SERVER, RABBITMQCTL, LocalRabbitCluster, LocalRabbitMQ
from tests.conftest import make_app, skip_or_fail, wait_for
from tests.faults.helpers import ZAPI_URL, count, events_landed, post_all, zapi
from workers.brokers.broker import QUEUE

pytestmark = pytest.mark.fault
# These tests are RabbitMQ's only (task_broker: the machine's RabbitMQ, emptied).
ON_RABBITMQ = pytest.mark.parametrize("task_broker", ["rabbitmq"], indirect=True)
# A node of the cluster killed: the seconds within which publishes may be refused (503) while
# the publisher reconnects to another node and the quorum queue elects a new leader.
FAILOVER_SECONDS = 10


def client_for(database_url: str, url: str) -> Any:
    return make_app(database_url, url).test_client()


def rabbit_worker(start_worker: Any, url: str, name: str = "w1", **options: Any) -> Any:
    env = {**options.pop("env", {}), "BROKER_URL": url}
    return start_worker(name, env=env, **options)


@ON_RABBITMQ
def test_callbacks_are_confirmed_on_a_quorum_queue_then_applied(
    client, db, task_broker, start_worker
):
    post_all(client, [zapi("SENT", f"RQ-{n}") for n in range(30)])
    # Answered 200 only once RabbitMQ confirmed it: every one is on the queue, no worker yet.
    assert task_broker.waiting() == 30
    with kombu.Connection(task_broker.url) as conn:
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
    worker = start_worker()
    wait_for(lambda: events_landed(db) == 30, timeout=60)
    wait_for(lambda: task_broker.waiting() == 0, timeout=10)
    assert "redis" not in worker.output().lower().replace("redis_url", "")
    assert count(db, "SELECT count(*) FROM dead_letters") == 0


@ON_RABBITMQ
def test_a_deleted_queue_is_refused_not_confirmed_into_nowhere(client, db, task_broker):
    """A queue deleted behind the web's back: publishing to it would be confirmed and
    dropped. Published as mandatory, it is returned: 503 (retried), then declared again."""
    post_all(client, [zapi("SENT", "DQ-1")])
    with kombu.Connection(task_broker.url) as conn:
        conn.channel().queue_delete(QUEUE)
    assert client.post(ZAPI_URL, json=zapi("SENT", "DQ-2")).status_code == 503
    post_all(client, [zapi("SENT", "DQ-3")])
    assert task_broker.waiting() == 1


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


@ON_RABBITMQ
@pytest.mark.parametrize("how", ["reset", "closed"])
def test_a_pooled_connection_that_died_is_replaced_not_answered_503(app, client, task_broker, how):
    """A publisher connection the pool kept can be dead when the next callback comes (the
    broker or a proxy dropped it while idle, a node restarted): the callback is published
    on a fresh connection, not answered 503 (Green-API freezes an instance's queue on one)."""
    app.config["GROUP_LINGER_SECONDS"] = 0
    post_all(client, [zapi("SENT", "POOL-1")])
    celery = app.extensions["ticks.celery"]
    with celery.producer_pool.acquire(block=True, timeout=1) as producer:
        connection = producer.connection.connection  # py-amqp's, kept by the pool
        if how == "reset":  # the socket gone under it, as after an idle timeout
            connection.sock.shutdown(socket.SHUT_RDWR)
        else:  # RabbitMQ closed it (rabbitmqctl close_connection, a node's restart)
            connection.transport.close()
    post_all(client, [zapi("RECEIVED", "POOL-1")])  # each must be answered 200
    wait_for(lambda: task_broker.waiting() == 2, timeout=10)
