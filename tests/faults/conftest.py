"""Fault tests run on servers of their own, which they stop, kill and restart."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedded import RABBITMQ_SERVER, EmbeddedPostgres, EmbeddedRedis, LocalRabbitMQ
from tests.brokers import BrokerProbe, probe_for
from tests.conftest import skip_or_fail
from tests.faults.servers import migrated_postgres


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[tuple[EmbeddedPostgres, str]]:
    server, url = migrated_postgres(tmp_path / "pg")
    yield server, url
    server.start()  # in case a test left it stopped, so cleanup can stop it properly
    server.cleanup()


@pytest.fixture
def redis_url(own_redis: EmbeddedRedis) -> str:
    return own_redis.url


@pytest.fixture
def database_url(own_postgres: tuple[EmbeddedPostgres, str]) -> str:
    return own_postgres[1]


@pytest.fixture
def own_rabbit(tmp_path: Path) -> Iterator[LocalRabbitMQ]:
    """A RabbitMQ node of the test's own (its own port, node name and data folder), never
    the machine's: the test may stop, kill or freeze it."""
    if not os.path.exists(RABBITMQ_SERVER):
        skip_or_fail("rabbitmq-server is not installed: a private RabbitMQ node cannot start")
    server = LocalRabbitMQ(tmp_path / "rabbitmq").start()
    yield server
    server.stop(signal.SIGKILL)


@pytest.fixture
def own_broker(request: pytest.FixtureRequest) -> Iterator[BrokerProbe]:
    """The test's own broker, which it may stop, kill, freeze and restart: Redis (own_redis),
    or each broker in turn for a test marked ON_EACH_OWN_BROKER (tests/brokers.py). app,
    client and start_worker use it (task_broker defers to it)."""
    kind = getattr(request, "param", "redis")
    server = request.getfixturevalue("own_rabbit" if kind == "rabbitmq" else "own_redis")
    probe = probe_for(kind, server.url, server)
    yield probe
    probe.close()
