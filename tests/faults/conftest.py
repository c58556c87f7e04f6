"""Fault tests run on servers of their own, which they stop, kill and restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from embedded import EmbeddedPostgres, EmbeddedRedis
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
