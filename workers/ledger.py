"""The in-flight ledger: every task message Ticks publishes, until a worker has finished it.

kombu's Redis transport takes a message off the queue (BRPOP) before it records it as
unacknowledged; a worker killed in between loses it for good, acks_late or not. So the
endpoint records each message here before publishing it, the worker removes it once the
message is finished (applied or dead-lettered), and a sweeper publishes again what has left
the queue, is held by no worker (not in kombu's unacked set) and is still not finished. A
message published twice this way is applied once: applying events is idempotent.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from celery import Celery

# Clients here are kombu's redis-py clients (conn.default_channel.client), typed as Any.
log = logging.getLogger(__name__)

INFLIGHT = "ticks:inflight"  # sorted set: task id -> time published
MESSAGES = "ticks:inflight:messages"  # hash: task id -> {"task": name, "payload": ...}
SWEEP_LOCK = "ticks:inflight:sweeping"
KOMBU_UNACKED = "unacked"


def record(pipe: Any, task_id: str, task_name: str, payload: Any) -> None:
    """Add the note of a message about to be published to a pipeline (a MULTI with the push)."""
    pipe.zadd(INFLIGHT, {task_id: time.time()})
    pipe.hset(MESSAGES, task_id, json.dumps({"task": task_name, "payload": payload}))


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


def sweep(app: Celery, queue: str, min_age: float, lock_seconds: int) -> int:
    """Publish again the messages the broker lost; return how many (one sweeper at a time)."""
    with app.pool.acquire(block=True, timeout=5) as conn:
        client = conn.default_channel.client
        if not client.set(SWEEP_LOCK, "1", nx=True, ex=lock_seconds):
            return 0
        missing = lost(client, queue, min_age)
        for task_id in missing:
            raw = client.hget(MESSAGES, task_id)
            if raw is None:  # finished meanwhile
                continue
            entry = json.loads(raw)
            app.send_task(
                entry["task"],
                args=[entry["payload"]],
                task_id=task_id,
                argsrepr="[republished: lost by the broker]",
            )
            client.zadd(INFLIGHT, {task_id: time.time()})
            log.warning("republished task %s: it left the queue but no worker held it", task_id)
        return len(missing)
