"""Outbound webhooks end to end: callbacks -> the status workers -> the change feed -> the
delivery worker -> a real HTTP receiver started here; with a receiver that fails, hangs,
closes the connection or comes back later, and a delivery worker killed mid-POST. Every test
runs on Redis and on RabbitMQ (ON_EACH_BROKER, tests/brokers.py)."""

from __future__ import annotations

import itertools
import random
import time
from collections import defaultdict

import pytest

from tests.brokers import ON_EACH_BROKER
from tests.conftest import API_TOKEN, load_fixture, signed_post, wait_for
from tests.receiver import Answer, Receiver, verified
from workers.celery_app import DELIVERY_QUEUE

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
STATUSES = ["SENT", "RECEIVED", "READ", "PLAYED"]
# A shortened clock: the schedule's steps in tenths of seconds, a day in seconds.
FAST = {
    "SUBSCRIPTIONS_ALLOW_PRIVATE": "true",
    "DELIVERY_POLL_SECONDS": "0.1",
    "DELIVERY_TIMEOUT": "1",
    "DELIVERY_RETRY_SCHEDULE": "0.5,1,2",
    "DELIVERY_MAX_AGE": "60",
    "DELIVERY_CIRCUIT_PAUSE": "1",
}


@pytest.fixture
def receiver():
    started = Receiver().start()
    yield started
    started.stop()


@pytest.fixture
def start_deliveries(start_worker):
    def start(name: str = "d1", **env: str):
        return start_worker(
            name, pool="threads", concurrency=4, queues=DELIVERY_QUEUE, env={**FAST, **env}
        )

    return start


def subscribe(app, url: str, *options: str) -> tuple[str, str]:
    app.config["SUBSCRIPTIONS_ALLOW_PRIVATE"] = True
    result = app.test_cli_runner().invoke(args=["subscriptions", "add", url, *options])
    assert result.exit_code == 0, result.output
    subscription_id, secret = result.output.splitlines()
    return subscription_id, secret


def callback(message_id: str, status: str) -> dict:
    return {**load_fixture("zapi", "seed_sent"), "ids": [message_id], "status": status}


def whole_feed(client) -> list[dict]:
    changes, cursor = [], "0"
    while True:
        page = client.get(f"/changes?after={cursor}&limit=500", headers=AUTH).json
        changes += page["changes"]
        if not page["changes"]:
            return changes
        cursor = page["next"]


@ON_EACH_BROKER
def test_every_change_reaches_the_receiver_signed_once_and_in_order_per_message(
    app, client, start_worker, start_deliveries, receiver
):
    _, secret = subscribe(app, receiver.url)
    start_worker("w1")
    start_worker("w2")
    start_deliveries()
    callbacks = [(f"M{n:02d}", status) for n in range(30) for status in STATUSES]
    random.Random(7).shuffle(callbacks)  # out of order, as providers send them
    for message_id, status in callbacks:
        assert signed_post(client, "zapi", callback(message_id, status)).status_code == 200
    wait_for(lambda: len(whole_feed(client)) >= 30, 60)
    time.sleep(1)  # the last callbacks' changes
    feed = wait_for(
        lambda: (f := whole_feed(client)) and len(receiver.delivered()) >= len(f) and f, 60
    )
    got = receiver.delivered()
    print(f"\n{len(callbacks)} callbacks, {len(feed)} changes, {len(got)} POSTs answered 2xx")
    assert all(verified(secret, r) for r in got)
    delivered = [r.document["data"] for r in got]
    assert sorted(c["cursor"] for c in delivered) == sorted(c["cursor"] for c in feed)  # once each
    by_message: dict[str, list[str]] = defaultdict(list)
    for change in delivered:
        by_message[change["message_id"]].append(change["cursor"])
    feed_order = {c["cursor"]: n for n, c in enumerate(feed)}
    for cursors in by_message.values():
        assert cursors == sorted(cursors, key=feed_order.__getitem__)


@ON_EACH_BROKER
def test_a_receiver_that_fails_then_comes_back_gets_everything_with_the_same_ids(
    app, client, start_worker, start_deliveries, receiver
):
    down_until = time.monotonic() + 4
    receiver.behaviour = lambda n, r: Answer(200 if time.monotonic() > down_until else 500)
    _, secret = subscribe(app, receiver.url)
    start_worker()
    start_deliveries()
    for status in STATUSES:
        signed_post(client, "zapi", callback("BACK", status))
    wait_for(lambda: len(receiver.delivered()) == 4, 60)
    print(f"\nreceiver back: all 4 delivered {time.monotonic() - down_until:.1f} s later")
    statuses = [r.document["data"]["status"] for r in receiver.delivered()]
    assert statuses == ["sent", "received", "read", "played"]
    first_id = receiver.delivered()[0].headers["webhook-id"]
    tries = [r for r in receiver.received if r.headers["webhook-id"] == first_id]
    assert len(tries) >= 3  # retried while down, with the same webhook-id
    gaps = [b.at - a.at for a, b in itertools.pairwise(tries)]
    # 0.5 s, 1 s, 2 s, 2 s... each +-20 %; the circuit (after 5 failures) may add its pause.
    assert gaps[0] >= 0.5 * 0.8 - 0.05
    assert all(gap >= 0.4 for gap in gaps)
    assert all(verified(secret, r) for r in receiver.received)


@ON_EACH_BROKER
def test_timeouts_and_closed_connections_are_retried_until_delivered(
    app, client, start_worker, start_deliveries, receiver
):
    answers = {0: Answer(delay=3), 1: Answer(close=True)}  # longer than DELIVERY_TIMEOUT=1
    receiver.behaviour = lambda n, r: answers.get(n, Answer())
    subscribe(app, receiver.url)
    start_worker()
    start_deliveries()
    signed_post(client, "zapi", callback("FLAKY", "SENT"))
    wait_for(lambda: receiver.delivered(), 60)
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
    assert len(receiver.received) >= 3


@ON_EACH_BROKER
def test_a_delivery_worker_killed_mid_post_loses_nothing(
    app, client, task_broker, start_worker, start_deliveries, receiver
):
    receiver.behaviour = lambda n, r: Answer(delay=30 if n == 0 else 0)  # holds the first
    subscribe(app, receiver.url)
    start_worker()
    doomed = start_deliveries("d1", DELIVERY_TIMEOUT="5")
    signed_post(client, "zapi", callback("KILLED", "SENT"))
    signed_post(client, "zapi", callback("KILLED", "READ"))
    wait_for(lambda: receiver.received, 30)
    doomed.kill_hard()
    killed = time.monotonic()
    # Another worker sends it again, with the same webhook-id. On Redis once its lease
    # (DELIVERY_TIMEOUT + 20 s) runs out and the pump leases it anew (Redis keeps the dead
    # worker's task message for its visibility timeout, an hour); on RabbitMQ at once: the
    # broker requeues that task message, and its lease token is still the delivery's.
    start_deliveries("d2", DELIVERY_TIMEOUT="1")
    wait_for(lambda: len(receiver.delivered()) == 2, 60)
    took = time.monotonic() - killed
    print(f"\n{task_broker.name}, killed mid-POST: both delivered {took:.1f} s after the kill")
    delivered = receiver.delivered()
    assert [r.document["data"]["status"] for r in delivered] == ["sent", "read"]
    assert delivered[0].headers["webhook-id"] == receiver.received[0].headers["webhook-id"]


@ON_EACH_BROKER
def test_a_hanging_receiver_never_holds_up_the_status_worker(
    app, client, start_worker, start_deliveries, receiver
):
    receiver.behaviour = lambda n, r: Answer(delay=5)
    subscribe(app, receiver.url)
    start_worker()
    start_deliveries(DELIVERY_TIMEOUT="10")
    started = time.monotonic()
    for n in range(20):
        signed_post(client, "zapi", callback(f"H{n}", "READ"))

    def all_read():
        statuses = [
            client.get(f"/messages/zapi/H{n}", headers=AUTH).json.get("status") for n in range(20)
        ]
        return statuses == ["read"] * 20

    wait_for(all_read, 30)
    took = time.monotonic() - started
    print(f"\nhanging receiver: 20 callbacks applied in {took:.2f} s")
    assert took < 5  # before the receiver answered even once
    assert not receiver.delivered()
