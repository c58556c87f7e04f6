"""The in-flight ledger: every task message Ticks publishes, until a worker has finished it.

kombu's Redis transport takes a message off the queue (BRPOP) before it records it as
unacknowledged; a worker killed in between loses it for good, acks_late or not. So every
message Ticks publishes (publish(): the endpoint, replays, the sweeper) is recorded here in
the same MULTI that pushes it, the worker removes it once the
message is finished (applied or dead-lettered), and a sweeper publishes again what has left
the queue, is held by no worker (not in kombu's unacked set) and is still not finished. A
message published twice this way is applied once: applying events is idempotent.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import kombu.exceptions
import redis.exceptions
from celery import Celery
from kombu.serialization import dumps as serialize
from kombu.utils.json import dumps as json_dumps

from workers.brokers.messages import create_task_message
from workers.core.settings import QUEUE

# Clients here are kombu's redis-py clients (conn.default_channel.client), typed as Any.
log = logging.getLogger(__name__)

INFLIGHT = "ticks:inflight"  # sorted set: task id -> time published
MESSAGES = "ticks:inflight:messages"  # hash: task id -> {"task": name, "payload": ...}
SWEEP_LOCK = "ticks:inflight:sweeping"
KOMBU_UNACKED = "unacked"
PERSISTENT = 2  # kombu's delivery_mode for persistent messages, as send_task sets it


def record(pipe: Any, task_id: str, task_name: str, payload: Any) -> None:
    """Add the note of a message about to be published to a pipeline (a MULTI with the push)."""
    pipe.zadd(INFLIGHT, {task_id: time.time()})
    pipe.hset(MESSAGES, task_id, json.dumps({"task": task_name, "payload": payload}))


def publish(
    celery: Celery,
    task_name: str,
    payload: Any,
    *,
    task_id: str,
    summary: str,
    timeout: float = 5,
) -> None:
    """Put a task message on the queue and in the ledger, in one transaction.

    The message is the one ``send_task`` would publish (Celery builds it, kombu frames it);
    only the last step differs: one MULTI/EXEC holds the LPUSH and the ledger entry, so both
    or neither are stored, in one round trip. Raises the broker's errors.
    """
    with celery.pool.acquire(block=True, timeout=timeout) as conn:
        channel = conn.default_channel
        message = broker_message(celery, channel, task_name, payload, task_id, summary)
        push(channel.client, task_id, task_name, payload, message)


def push(client: Any, task_id: str, task_name: str, payload: Any, message: str) -> None:
    """LPUSH a task message as the broker stores it, with its ledger entry, in one MULTI."""
    pipe = client.pipeline(transaction=True)
    record(pipe, task_id, task_name, payload)
    pipe.lpush(QUEUE, message)
    pipe.execute()


def broker_message(
    celery: Celery, channel: Any, task_name: str, payload: Any, task_id: str, summary: str
) -> str:
    """Return the task message as kombu's Redis transport stores it on the queue."""
    headers, properties, body = create_task_message(celery, task_name, payload, task_id, summary)
    content_type, content_encoding, data = serialize(body, serializer="json")
    message = channel.prepare_message(
        data,
        0,
        content_type,
        content_encoding,
        headers,
        {**properties, "delivery_mode": PERSISTENT},
    )
    # What kombu's basic_publish does before its own LPUSH: encode the body, number the
    # delivery, and address it (the default exchange routes by queue name).
    channel._inplace_augment_message(message, "", QUEUE)
    return json_dumps(message)


def finish(pipe: Any, task_id: str) -> None:
    """Add the removal of a finished message to a pipeline."""
    pipe.zrem(INFLIGHT, task_id)
    pipe.hdel(MESSAGES, task_id)


def task_id_of(raw: bytes | str) -> str | None:
    """Return the task id of a kombu message as Redis stores it."""
    message = json.loads(raw)
    if isinstance(message, list):  # the unacked hash stores [message, exchange, routing key]
        message = message[0]
    return message.get("headers", {}).get("id")


def lost(client: Any, queue: str, min_age: float) -> list[str]:
    """Return the ids of messages that left the queue, are held by nobody and are unfinished.

    The queue is first in, first out: a message published before the oldest one still
    waiting has left it. Those restored or requeued out of order only make this cautious.
    """
    cutoff = time.time() - min_age
    oldest = client.lindex(queue, -1)
    if oldest is not None:
        oldest_id = task_id_of(oldest)
        score = client.zscore(INFLIGHT, oldest_id) if oldest_id else None
        if score is not None:
            cutoff = min(cutoff, score)
    candidates = [m.decode() for m in client.zrangebyscore(INFLIGHT, 0, f"({cutoff}")]
    if not candidates:
        return []
    held = {task_id_of(raw) for raw in client.hvals(KOMBU_UNACKED)}
    return [task_id for task_id in candidates if task_id not in held]


def sweep_or_skip(
    app: Celery, queue: str, min_age: float, lock_seconds: int, lock_key: str = SWEEP_LOCK
) -> int:
    """sweep(), except that a broker that does not answer only skips this sweep (logged)."""
    try:
        return sweep(app, queue, min_age, lock_seconds, lock_key)
    except (OSError, redis.exceptions.RedisError, kombu.exceptions.OperationalError) as exc:
        log.warning("ledger sweep skipped: %s", exc)
        return 0


def sweep(
    app: Celery, queue: str, min_age: float, lock_seconds: int, lock_key: str = SWEEP_LOCK
) -> int:
    """Publish again the messages the broker lost; return how many (one sweeper at a time)."""
    with app.pool.acquire(block=True, timeout=5) as conn:
        client = conn.default_channel.client
        if not client.set(lock_key, "1", nx=True, ex=lock_seconds):
            return 0
        missing = lost(client, queue, min_age)
        for task_id in missing:
            raw = client.hget(MESSAGES, task_id)
            if raw is None:  # finished meanwhile
                continue
            entry = json.loads(raw)
            publish(
                app,
                entry["task"],
                entry["payload"],
                task_id=task_id,
                summary="[republished: lost by the broker]",
            )
            log.warning("republished task %s: it left the queue but no worker held it", task_id)
        return len(missing)
