"""The broker goes away under load, every way it can, and comes back: the same worker goes on.

Each test posts callbacks through the endpoint at a paced 100/s to a real prefork worker (the
Procfile's pool), takes the broker away while the worker holds messages, brings it back 5 s
later, and checks that every callback answered 200 is committed once, within 30 s of the
broker's return, by the same worker process. Redis' visibility timeout and the ledger's sweep
age stay at their defaults (1 h, 2 min): nothing here may wait for them.

On RabbitMQ (a private node) the node is crashed (SIGKILL) and frozen (SIGSTOP) under load.
What only Redis has is Redis' only, and says why in its skip reason: the SHUTDOWN command (the
kombu bug it once triggered), a Redis that keeps nothing on disk, the in-flight ledger.
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import time
from collections.abc import Callable

import pytest
import redis.exceptions

from embedded import EmbeddedRedis
from tests.brokers import BrokerProbe, RedisProbe
from tests.conftest import wait_for
from tests.faults.helpers import ZAPI_URL, count, zapi
from tests.faults.load import PacedLoad
from workers.brokers import ledger
from workers.celery_app import QUEUE

pytestmark = pytest.mark.fault
RATE = 100
DOWN_SECONDS = 5
RECOVERY_SECONDS = 30


def shutdown_command(*args: str) -> Callable[[BrokerProbe], None]:
    def stop(broker: BrokerProbe) -> None:
        server = broker.server
        assert isinstance(server, EmbeddedRedis) and server.process is not None
        # The server closes the connection as it exits: no answer comes back.
        with contextlib.suppress(redis.exceptions.ConnectionError):
            server.client().execute_command("SHUTDOWN", *args)
        server.process.wait(timeout=10)

    return stop


def signal_stop(sig: int) -> Callable[[BrokerProbe], None]:
    return lambda broker: broker.stop(sig)


def lose_everything(server: EmbeddedRedis) -> None:
    """A crash of a Redis that keeps nothing on disk: it comes back empty."""
    server.stop(signal.SIGKILL)
    for path in server.data.glob("*"):
        if path.name.startswith("appendonly") or path.suffix == ".rdb":
            if path.is_dir():
                for inner in path.iterdir():
                    inner.unlink()
                path.rmdir()
            else:
                path.unlink()


def restart(broker: BrokerProbe) -> None:
    broker.start()


# How the broker goes away, and how it comes back.
FAULTS = {
    "shutdown": (shutdown_command(), restart),
    "shutdown-nosave": (shutdown_command("NOSAVE"), restart),
    "sigterm": (signal_stop(signal.SIGTERM), restart),
    "sigkill": (signal_stop(signal.SIGKILL), restart),
    # A hung host, a VM paused for a snapshot: connections stay open and nothing answers.
    "frozen": (BrokerProbe.freeze, BrokerProbe.thaw),
}
REDIS_SHUTDOWN = (
    "SHUTDOWN is a Redis command (the way kombu's Redis transport once lost a worker, "
    "docs/RELIABILITY.md); RabbitMQ has none: its node is crashed and frozen here, and stopped "
    "cleanly in test_outages.py (test_broker_restart_keeps_its_backlog[restart-rabbitmq])"
)
# On RabbitMQ: a crash and a freeze under load. A clean stop (SIGTERM) is left to
# test_outages.py's restart case and the soak test: a node takes ~8 s to start, and the worker
# sees what it sees in a crash (its connections drop).
RABBITMQ_SKIPS = {"shutdown": REDIS_SHUTDOWN, "shutdown-nosave": REDIS_SHUTDOWN}
RABBITMQ_FAULTS = ("sigkill", "frozen")
CASES = [
    *(pytest.param(how, "redis", id=f"{how}-redis") for how in FAULTS),
    *(
        pytest.param(how, "rabbitmq", id=f"{how}-rabbitmq", marks=pytest.mark.skip(reason=why))
        for how, why in RABBITMQ_SKIPS.items()
    ),
    *(pytest.param(how, "rabbitmq", id=f"{how}-rabbitmq") for how in RABBITMQ_FAULTS),
]


def committed(db, prefix: str) -> set[str]:
    rows = db.execute(
        "SELECT message_id FROM status_events WHERE message_id LIKE %s", (f"{prefix}-%",)
    ).fetchall()
    return {row[0] for row in rows}


def where_are(broker, message_ids: set[str]) -> dict[str, list[str]]:
    """Where Redis still holds each message id: the queue, kombu's unacked, the ledger."""
    places: dict[str, list[str]] = {mid: [] for mid in message_ids}
    for name, values in (
        ("queue", broker.lrange(QUEUE, 0, -1)),
        ("unacked", broker.hvals("unacked")),
        ("ledger", broker.hvals(ledger.MESSAGES)),
    ):
        for raw in values:
            message = json.loads(raw)
            if isinstance(message, list):  # unacked: [message, exchange, routing key]
                message = message[0]
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            if isinstance(message, dict) and "body" in message:
                text = base64.b64decode(message["body"]).decode(errors="replace")
            for mid in message_ids:
                if f'"{mid}"' in text:
                    places[mid].append(name)
    return places


def check_recovery(
    db, load: PacedLoad, prefix: str, back_at: float, worker, expect_lost=(), broker=None
):
    """Every callback answered 200 committed once, soon, by the same worker process."""
    accepted = load.accepted() - set(expect_lost)
    deadline = time.monotonic() + RECOVERY_SECONDS
    while not accepted <= committed(db, prefix):
        if time.monotonic() > deadline:
            missing = accepted - committed(db, prefix)
            try:
                places = where_are(broker, missing) if broker is not None else {}
            except Exception as exc:  # the diagnosis must not hide the failure
                places = {"?": [repr(exc)]}
            pytest.fail(
                f"{len(missing)} of {len(accepted)} callbacks answered 200 not committed "
                f"{RECOVERY_SECONDS}s after the broker's return ({places}); worker alive: "
                f"{worker.process.poll() is None}; its log ends:\n{worker.output()[-6000:]}"
            )
        time.sleep(0.1)
    recovered = time.monotonic() - back_at
    # One history row per event: nothing applied twice.
    assert count(
        db, "SELECT count(*) FROM status_events WHERE message_id LIKE %s", f"{prefix}-%"
    ) == len(committed(db, prefix))
    assert worker.process.poll() is None, worker.output()[-4000:]
    assert "Unrecoverable error" not in worker.output(), worker.output()[-4000:]
    return recovered


@pytest.mark.parametrize(("how", "own_broker"), CASES, indirect=["own_broker"])
def test_broker_away_under_load_worker_survives_and_everything_lands(
    client, db, own_broker, start_worker, how, record_property
):
    take_away, bring_back = FAULTS[how]
    worker = start_worker(pool="prefork", concurrency=2)
    pid = worker.process.pid
    prefix = f"RS-{how}"
    load = PacedLoad(client, prefix, RATE).start()
    try:
        time.sleep(3)
        take_away(own_broker)
        try:
            time.sleep(DOWN_SECONDS)
        finally:
            bring_back(own_broker)
        back_at = time.monotonic()
        time.sleep(3)
    finally:
        load.stop()
    diagnose = own_broker.client if isinstance(own_broker, RedisProbe) else None
    recovered = check_recovery(db, load, prefix, back_at, worker, broker=diagnose)
    assert worker.process.pid == pid
    own_broker.assert_all_acknowledged(worker)
    record_property("accepted", len(load.accepted()))
    record_property("seconds_to_commit_after_return", round(recovered, 1))
    print(
        f"\n{own_broker.name} {how} under {RATE}/s: {len(load.accepted())} answered 200, "
        f"{load.refused()} refused, all committed once {recovered:.1f}s after its return"
    )


def on_redis_only(why: str) -> pytest.MarkDecorator:
    """Run on Redis (own_broker); on RabbitMQ the case is skipped, saying ``why``."""
    return pytest.mark.parametrize(
        "own_broker",
        ["redis", pytest.param("rabbitmq", marks=pytest.mark.skip(reason=why))],
        indirect=True,
    )


@on_redis_only(
    "a RabbitMQ that keeps nothing on disk does not exist: a quorum queue confirms a publish "
    "only once it is synced to disk (test_broker_restart_keeps_its_backlog[crash-rabbitmq]); "
    "a node that loses its disk is its cluster's to survive "
    "(test_a_quorum_queue_on_three_nodes_survives_losing_one_under_load)"
)
def test_redis_back_empty_worker_survives_and_consumes_what_comes_next(
    client, db, own_broker, own_redis, start_worker, record_property
):
    """A Redis that keeps nothing on disk crashes: what waited in it is gone with it (no
    receiver can help that; docs/RELIABILITY.md says to run Redis with AOF). The worker must
    survive it, publish again what it held, and consume everything accepted afterwards."""
    worker = start_worker(pool="prefork", concurrency=2)
    pid = worker.process.pid
    before = PacedLoad(client, "RS-empty-before", RATE).start()
    try:
        time.sleep(3)
        lose_everything(own_redis)
    finally:
        before.stop()
    time.sleep(DOWN_SECONDS)
    own_redis.start()
    back_at = time.monotonic()
    after = PacedLoad(client, "RS-empty-after", RATE).start()
    time.sleep(3)
    after.stop()
    recovered = check_recovery(db, after, "RS-empty-after", back_at, worker)
    assert worker.process.pid == pid
    lost = before.accepted() - committed(db, "RS-empty-before")
    record_property("lost_with_redis", len(lost))
    print(
        f"\nRedis back empty: {len(after.accepted())} callbacks answered 200 after its return, "
        f"all committed once {recovered:.1f}s later; of {len(before.accepted())} answered "
        f"before the crash, {len(lost)} were lost with Redis' data"
    )


@on_redis_only(
    "the in-flight ledger and its sweep after a reconnection are Redis' only: RabbitMQ keeps "
    "a message a consumer took until it is acknowledged, and requeues it as the consumer's "
    "connection drops (test_a_message_a_vanished_consumer_took_is_delivered_again_and_applied_"
    "once[rabbitmq])"
)
def test_message_lost_in_a_broker_restart_is_recovered_in_seconds(
    client, db, own_broker, own_redis, start_worker
):
    """A message taken off the queue and never recorded as held (the worker's connection
    dropped in between) is only in the in-flight ledger. After a reconnection the worker
    sweeps the ledger within seconds, not after TICKS_SWEEP_MIN_AGE (120 s by default)."""
    for mid in ("LOST-1", "KEPT-1"):
        assert client.post(ZAPI_URL, json=zapi("SENT", mid)).status_code == 200
    broker = own_redis.client()
    assert broker.rpop(QUEUE) is not None  # LOST-1: gone from the queue, held by nobody
    worker = start_worker(pool="prefork", concurrency=2)
    wait_for(lambda: count(db, "SELECT count(*) FROM messages") == 1)
    time.sleep(1.5)  # older than the recovery sweep's minimum age
    own_redis.stop(signal.SIGTERM)
    own_redis.start()
    back_at = time.monotonic()
    wait_for(lambda: count(db, "SELECT count(*) FROM messages") == 2, timeout=20)
    recovered = time.monotonic() - back_at
    assert count(db, "SELECT count(*) FROM status_events") == 2
    wait_for(lambda: own_redis.client().zcard(ledger.INFLIGHT) == 0, timeout=10)
    assert worker.process.poll() is None
    print(f"\nmessage lost in the transport: applied {recovered:.1f}s after Redis' return")
