"""Handing back what a worker held when its broker connection dropped (workers/brokers/recovery.py),
on a real Redis: kombu's own objects, no worker process."""

from __future__ import annotations

import json

import pytest
import redis.client
import redis.exceptions

from workers.brokers import ledger
from workers.brokers.recovery import HandedBack, hand_back, lost_channels, take_held
from workers.celery_app import APPLY_EVENTS, QUEUE, make_celery

EVENTS = [{"provider": "zapi", "message_id": "HB-1", "status": "sent"}]


def held_message(redis_url: str):
    """Publish a task message as the endpoint does, and take it as a worker does (BRPOP'd and
    recorded in kombu's unacked set); return the connection and the message."""
    celery = make_celery(redis_url)
    ledger.publish(celery, APPLY_EVENTS, EVENTS, task_id="hb-task", summary="[1 events]")
    connection = celery.connection_for_read()
    message = connection.default_channel.basic_get(QUEUE, no_ack=False)
    assert message is not None
    return connection, message


def test_held_messages_are_taken_off_the_lost_connection_and_their_acks_dropped(redis_url, broker):
    connection, message = held_message(redis_url)
    [taken] = take_held(lost_channels(connection))
    assert taken is message and isinstance(message.channel, HandedBack)
    message.ack()  # what a task finishing late does: nothing, and no error
    connection.close()  # kombu restores nothing itself: the message stays in unacked
    assert broker.hlen("unacked") == 1 and broker.llen(QUEUE) == 0


def test_a_held_message_still_in_unacked_goes_back_to_the_queue(redis_url, broker):
    connection, message = held_message(redis_url)
    take_held(lost_channels(connection))
    fresh = make_celery(redis_url).connection_for_read().default_channel
    assert hand_back(fresh.client, fresh, [message]) == (1, 0)
    assert broker.hlen("unacked") == 0 and broker.llen(QUEUE) == 1
    restored = json.loads(broker.lindex(QUEUE, 0))
    assert restored["headers"]["id"] == "hb-task"
    assert restored["properties"]["delivery_info"]["redelivered"] is True


def test_a_held_message_redis_lost_is_published_again_with_its_ledger_entry(redis_url, broker):
    connection, message = held_message(redis_url)
    take_held(lost_channels(connection))
    broker.flushdb()  # Redis came back empty: queue, unacked set and ledger gone
    fresh = make_celery(redis_url).connection_for_read().default_channel
    assert hand_back(fresh.client, fresh, [message]) == (0, 1)
    [raw] = broker.lrange(QUEUE, 0, -1)
    republished = json.loads(raw)
    assert republished["headers"]["id"] == "hb-task"
    assert republished["properties"]["delivery_info"]["redelivered"] is True
    assert broker.zscore(ledger.INFLIGHT, "hb-task") is not None
    assert json.loads(broker.hget(ledger.MESSAGES, "hb-task"))["payload"] == EVENTS


def test_a_message_whose_recording_as_held_lost_its_answer_is_handed_back(
    redis_url, broker, monkeypatch
):
    """Redis ran the MULTI recording the message in unacked, then stopped before answering
    (SIGTERM, SHUTDOWN): the worker must still count it as held, or it waits in unacked for
    the visibility timeout (1 h) held by nobody (CI, stop 13: one callback in 613)."""
    celery = make_celery(redis_url)
    ledger.publish(celery, APPLY_EVENTS, EVENTS, task_id="hb-task", summary="[1 events]")
    connection = celery.connection_for_read()
    channel = connection.default_channel
    execute = redis.client.Pipeline.execute

    def answer_lost(self, *args, **kwargs):
        execute(self, *args, **kwargs)
        raise redis.exceptions.ConnectionError("Connection closed by server.")

    monkeypatch.setattr(redis.client.Pipeline, "execute", answer_lost)
    with pytest.raises(redis.exceptions.ConnectionError):
        channel.basic_get(QUEUE, no_ack=False)
    monkeypatch.undo()
    assert broker.hlen("unacked") == 1 and broker.llen(QUEUE) == 0
    [message] = take_held(lost_channels(connection))
    assert message.headers["id"] == "hb-task"
    fresh = make_celery(redis_url).connection_for_read().default_channel
    assert hand_back(fresh.client, fresh, [message]) == (1, 0)
    assert broker.hlen("unacked") == 0 and broker.llen(QUEUE) == 1
