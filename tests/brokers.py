"""The task broker as a test sees it, on Redis and on RabbitMQ.

A test marked ``@ON_EACH_BROKER`` runs once per broker (ids ``redis`` and ``rabbitmq``); its
``task_broker`` fixture (tests/conftest.py) is one of the probes below, and ``app``,
``client`` and ``start_worker`` use its URL. A fault test that stops, kills or freezes its
broker takes ``own_broker`` instead (tests/faults/conftest.py): a private server (an
``EmbeddedRedis``, a ``LocalRabbitMQ`` node on its own port and data folder) that the probe
can also stop, start, freeze and thaw.

Only what differs between the brokers lives here: the tests assert the same behaviour on both.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any, Protocol

import amqp.exceptions
import kombu
import pytest
import redis

from embedded import EmbeddedRedis, LocalRabbitMQ
from workers.brokers import ledger
from workers.brokers.broker import DEAD_LETTER_QUEUE, DELIVERY_QUEUE, QUEUE

BROKERS = ("redis", "rabbitmq")
# Runs the test once on Redis and once on RabbitMQ (the `task_broker` fixture, indirect).
ON_EACH_BROKER = pytest.mark.parametrize("task_broker", BROKERS, indirect=True)
# The same, for a fault test that stops, kills or freezes its broker (`own_broker`).
ON_EACH_OWN_BROKER = pytest.mark.parametrize("own_broker", BROKERS, indirect=True)


def redis_client(url: str) -> redis.Redis:
    """Return a redis-py client for a kombu broker URL (TCP or redis+socket://)."""
    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"))
    return redis.Redis.from_url(url)


def empty_rabbitmq(url: str) -> None:
    """Empty Ticks' queues (purged, not deleted: publishers keep their declarations)."""
    with kombu.Connection(url) as conn:
        for name in (QUEUE, DEAD_LETTER_QUEUE, DELIVERY_QUEUE):
            with contextlib.suppress(amqp.exceptions.NotFound):  # not declared yet
                conn.channel().queue_purge(name)


class Stoppable(Protocol):
    def stop(self) -> None: ...


class BrokerProbe:
    """What every test may ask of the broker, whichever it is; the server's controls when
    the test owns it."""

    name: str
    url: str
    server: EmbeddedRedis | LocalRabbitMQ | None

    def waiting(self, queue: str = QUEUE) -> int:
        """Task messages waiting on ``queue`` (not yet taken by a worker)."""
        raise NotImplementedError

    def assert_all_acknowledged(self, *workers: Stoppable, timeout: float = 30) -> None:
        """Every task message was finished and acknowledged: none waiting, none still held
        by a worker, nothing left to publish again."""
        raise NotImplementedError

    def purge(self) -> None:
        raise NotImplementedError

    def take_and_vanish(self) -> None:
        """A consumer takes the oldest task message off the queue and vanishes without
        acknowledging it."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the probe's connections."""

    # -- a server the test owns ------------------------------------------------------------

    def _own(self) -> Any:
        if self.server is None:
            pytest.fail(f"{self.name} at {self.url} is shared: a test may not stop it")
        return self.server

    def stop(self, how: int = signal.SIGTERM) -> None:
        """Stop the server (SIGTERM: a clean stop; SIGKILL: a crash), keeping its data."""
        self._own().stop(how)

    def start(self) -> None:
        """Start the server again on the same data."""
        self._own().start()

    def freeze(self) -> None:
        """SIGSTOP the server: connections stay open and nothing answers (a hung host)."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        process = self._own().process
        assert process is not None
        os.kill(process.pid, sig)


class RedisProbe(BrokerProbe):
    """Redis: the queue is a list; kombu keeps what workers hold in its `unacked` hash, and
    Ticks every published message in its in-flight ledger until a worker finishes it."""

    name = "redis"

    def __init__(self, url: str, server: EmbeddedRedis | None = None) -> None:
        self.url = url
        self.server = server
        self.client = redis_client(url)

    def waiting(self, queue: str = QUEUE) -> int:
        return int(self.client.llen(queue))

    def all_acknowledged(self) -> bool:
        return not (
            self.client.llen(QUEUE)
            or self.client.hlen("unacked")
            or self.client.zcard(ledger.INFLIGHT)
        )

    def assert_all_acknowledged(self, *workers: Stoppable, timeout: float = 30) -> None:
        """Redis shows it live, with the workers running: the queue, kombu's unacked hash
        and the in-flight ledger all empty."""
        from tests.conftest import wait_for

        wait_for(self.all_acknowledged, timeout)

    def purge(self) -> None:
        self.client.flushdb()

    def take_and_vanish(self) -> None:
        """As a worker killed between its BRPOP and kombu recording the message as held:
        the message is gone from the queue and from kombu's unacked hash."""
        assert self.client.rpop(QUEUE) is not None
        assert not self.client.hlen("unacked")

    def close(self) -> None:
        self.client.close()


class RabbitProbe(BrokerProbe):
    """RabbitMQ: the durable quorum queue `ticks`, its dead-letter queue, the deliveries'
    queue. Over AMQP RabbitMQ tells how many messages are ready, not how many its consumers
    hold unacknowledged (only the management API does)."""

    name = "rabbitmq"

    def __init__(self, url: str, server: LocalRabbitMQ | None = None) -> None:
        self.url = url
        self.server = server

    def waiting(self, queue: str = QUEUE) -> int:
        with kombu.Connection(self.url, connect_timeout=5) as conn:
            try:
                return int(conn.channel().queue_declare(queue, passive=True).message_count)
            except amqp.exceptions.NotFound:  # nothing published to it yet
                return 0

    def assert_all_acknowledged(self, *workers: Stoppable, timeout: float = 30) -> None:
        """The queues empty, then the workers stopped: a stopping worker's connection hands
        back to the queue whatever it still held unacknowledged (as a dead one's does), so
        they must stay empty. Nothing else to check: no ledger, no visibility timeout."""
        from tests.conftest import wait_for

        wait_for(lambda: self.waiting() == 0, timeout)
        for worker in workers:
            worker.stop()
        time.sleep(1)  # RabbitMQ requeues a closed connection's messages at once
        assert self.waiting() == 0, "a worker held messages it had not acknowledged"
        assert self.waiting(DEAD_LETTER_QUEUE) == 0

    def purge(self) -> None:
        empty_rabbitmq(self.url)

    def take_and_vanish(self) -> None:
        """basic.get without acknowledging, then the consumer's connection drops."""
        with kombu.Connection(self.url) as conn:
            assert conn.channel().basic_get(QUEUE, no_ack=False) is not None

    def _signal(self, sig: int) -> None:
        # The node runs as a process group (the script, beam.smp, its helpers): all of it.
        process = self._own().process
        assert process is not None
        os.killpg(process.pid, sig)


def probe_for(kind: str, url: str, server: Any = None) -> BrokerProbe:
    if kind == "redis":
        return RedisProbe(url, server)
    if kind == "rabbitmq":
        return RabbitProbe(url, server)
    raise ValueError(f"no such broker: {kind!r} (one of {BROKERS})")
