"""Fault tests run on servers of their own, which they stop, kill and restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.servers import PostgresServer, RedisServer


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path / "pg")
    yield server
    server.start()  # in case a test left it stopped, so cleanup can stop it properly
    server.cleanup()


@pytest.fixture
def redis_url(own_redis: RedisServer) -> str:
    return own_redis.url


@pytest.fixture
def database_url(own_postgres: PostgresServer) -> str:
    return own_postgres.url
