"""Fixtures: real Postgres and real Redis (from TEST_* variables, else embedded servers), and
RabbitMQ for the tests that run on each broker (tests/brokers.py)."""

from __future__ import annotations

import base64
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import kombu
import psycopg
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from psycopg.conninfo import make_conninfo

from app import create_app
from embedded import EmbeddedPostgres, EmbeddedRedis
from schemas.events import StatusEvent
from schemas.proofs import SignatureAuth, TokenAuth, UrlSignatureAuth, each, url_signature
from schemas.registry import FORM, REGISTRY
from tests.brokers import BrokerProbe, probe_for, redis_client
from workers.celery_app import QUEUE
from workers.core.db import close_pool
from workers.core.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
WEBHOOK_TOKENS = {
    "zapi": ("zapi-secret-one", "zapi-secret-two"),
    "greenapi": ("green-secret",),
    "plug": ("plug-secret",),
    "meta": ("meta-app-secret-old", "meta-app-secret"),  # app secrets, mid-rotation
    "evolution": ("evolution-token",),
    "waha": ("waha-token",),
    "twilio": ("twilio-auth-token-old", "twilio-auth-token"),
}
# Secrets of a provider's other settings: handshakes, a second way to prove a callback.
OTHER_SECRETS = {
    "META_VERIFY_TOKENS": ("meta-verify-token",),
    "WAHA_HMAC_KEYS": ("waha-hmac-key",),
}
VERIFY_TOKENS = {"meta": OTHER_SECRETS["META_VERIFY_TOKENS"]}
API_TOKEN = "api-secret-for-tests"
TABLES = (
    "changes, receipts, status_events, messages, quarantine, dead_letters, subscriptions, "
    "deliveries, erasures, feed_horizon, instance_events, instances, instance_traffic, "
    "insight_counts, instance_health"
)
# The URL the Flask test client calls, as a provider that signs URLs (Twilio) sees it.
TEST_CLIENT_BASE = "http://localhost"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "soak: a fault soak of minutes (make soak); left out unless -m names soak"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave the soak tests out (deselected, not skipped) unless `-m` names them."""
    if "soak" in (config.getoption("markexpr") or ""):
        return
    soak = [item for item in items if item.get_closest_marker("soak")]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if not item.get_closest_marker("soak")]


def provider_secrets(tokens: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """The app's PROVIDER_SECRETS for secrets given by provider (to the setting of its first
    proof), with OTHER_SECRETS."""
    secrets = {REGISTRY[name].auth.settings[0]: value for name, value in tokens.items()}
    return {**OTHER_SECRETS, **secrets}


def signed_post(
    client: FlaskClient, provider: str, body: Any, secret: str | None = None, **kwargs: Any
) -> Any:
    """POST a body the way its provider proves it sent it: a token in the URL, the HMAC of
    the exact bytes in a header, or Twilio's signature of the URL and the form."""
    record = REGISTRY[provider]
    secret = secret or WEBHOOK_TOKENS[provider][0]
    proof = each(record.auth)[0]
    headers = kwargs.pop("headers", {})
    if isinstance(proof, TokenAuth):
        return client.post(f"/webhooks/{provider}/{secret}", json=body, headers=headers, **kwargs)
    path = f"/webhooks/{provider}"
    if isinstance(proof, UrlSignatureAuth):
        fields = list(body.items()) if isinstance(body, dict) else body
        signature = url_signature(secret, TEST_CLIENT_BASE + path, fields)
        return client.post(
            path,
            data=urlencode(fields),
            headers={proof.header: signature, **headers},
            content_type=FORM,
            **kwargs,
        )
    assert isinstance(proof, SignatureAuth)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    digest = hmac.new(secret.encode(), raw, proof.digest).hexdigest()
    headers = {proof.header: f"{proof.prefix}{digest}", **headers}
    return client.post(path, data=raw, headers=headers, content_type="application/json", **kwargs)


def event_now(message_id: str, status: str = "sent", **fields: Any) -> StatusEvent:
    """A Z-API event that happens now (override any field)."""
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "provider": "zapi",
        "message_id": message_id,
        "status": status,
        "raw_status": status.upper(),
        "occurred_at": now,
        "received_at": now,
    }
    return StatusEvent(**{**values, **fields})


def load_fixture(provider: str, name: str) -> Any:
    """Return a provider payload from tests/fixtures/<provider>/<name>.json."""
    return json.loads((FIXTURES / provider / f"{name}.json").read_text())


def fixture_names(provider: str) -> list[str]:
    """Return the names of every payload fixture of a provider."""
    return sorted(path.stem for path in (FIXTURES / provider).glob("*.json"))


def free_port() -> int:
    """Return a loopback port nobody listens on (for a server to take, or to find closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.05) -> Any:
    """Poll until ``predicate`` returns a truthy value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Return a server URL: TEST_DATABASE_URL, or an embedded PostgreSQL started here."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg"))
    yield server.server.get_uri()
    server.cleanup()


@pytest.fixture(scope="session")
def database_url(postgres_url: str) -> Iterator[str]:
    """Create a fresh, migrated database for this test session, and drop it afterwards."""
    name = f"ticks_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(postgres_url, dbname=name)
    migrate(url)
    os.environ["DATABASE_URL"] = url
    yield url
    close_pool()
    if os.environ.get("TEST_DATABASE_URL"):  # an embedded server is discarded whole
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Return a broker URL: TEST_REDIS_URL, or an embedded Redis on a private socket."""
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        yield url
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def skip_or_fail(reason: str) -> None:
    """Skip a test whose server is missing; under CI=true that is a failure, not a skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: these tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """A RabbitMQ to test against: TEST_AMQP_URL, else the machine's at 127.0.0.1:5672."""
    url = os.environ.get("TEST_AMQP_URL", DEFAULT_AMQP_URL)
    try:
        with kombu.Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        skip_or_fail(f"no RabbitMQ at {url} ({exc}); set TEST_AMQP_URL to run these tests")
    return url


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """Return an autocommit connection to an emptied test database."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLES}")
        yield conn


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    """Return a client of the emptied broker database."""
    client = redis_client(redis_url)
    client.flushdb()
    yield client
    client.close()


def make_app(database_url: str, broker_url: str, **overrides: Any) -> Flask:
    """Create the web app wired to the test servers."""
    config = {
        "TESTING": True,
        "DATABASE_URL": database_url,
        "BROKER_URL": broker_url,
        "API_TOKEN": API_TOKEN,
        "PROVIDER_SECRETS": provider_secrets(WEBHOOK_TOKENS),
        "PUBLIC_URL": TEST_CLIENT_BASE,
        **overrides,
    }
    return create_app(config)


@pytest.fixture
def task_broker(request: pytest.FixtureRequest) -> Iterator[BrokerProbe]:
    """The broker app, client and start_worker use, emptied before and after the test: Redis,
    or each broker in turn for a test marked ON_EACH_BROKER (tests/brokers.py), RabbitMQ being
    the machine's (rabbitmq_url). A fault test that stops its broker gets its own_broker."""
    if "own_broker" in request.fixturenames:
        yield request.getfixturevalue("own_broker")
        return
    kind = getattr(request, "param", "redis")
    url = request.getfixturevalue("rabbitmq_url" if kind == "rabbitmq" else "redis_url")
    probe = probe_for(kind, url)
    probe.purge()
    yield probe
    probe.purge()
    probe.close()


@pytest.fixture
def app(database_url: str, task_broker: BrokerProbe, db: psycopg.Connection) -> Flask:
    """Return the web app on the test database and broker, both emptied."""
    return make_app(database_url, task_broker.url)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """Return a test client of the app."""
    return app.test_client()


def queued(broker: redis.Redis) -> list[tuple[str, Any]]:
    """Return (task name, first argument) of every message waiting on the queue, oldest first."""
    tasks = []
    for raw in reversed(broker.lrange(QUEUE, 0, -1)):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        tasks.append((message["headers"]["task"], args[0]))
    return tasks


class Worker:
    """A real `celery worker` process on the test broker and database."""

    def __init__(
        self,
        name: str,
        log_path: Path,
        env: dict[str, str],
        pool: str = "solo",
        concurrency: int = 1,
        app: str = "workers.celery_app",
        queues: str = QUEUE,
    ) -> None:
        self.log_path = log_path
        self.log = log_path.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                app,
                "worker",
                "--pool",
                pool,
                "--concurrency",
                str(concurrency),
                "--hostname",
                f"{name}@%h",
                "--queues",
                queues,
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill_hard reaches the pool too
        )

    def output(self) -> str:
        """Return what the worker has logged so far."""
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until the worker consumes."""
        wait_for(lambda: " ready." in self.output() or self.process.poll() is not None, timeout)
        assert self.process.poll() is None, self.output()

    def kill_hard(self) -> None:
        """SIGKILL the worker and its pool at once, as an OOM killer or a crash would."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """Stop the worker (warm shutdown), killing it if it does not stop in time."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


@pytest.fixture
def start_worker(
    database_url: str, task_broker: BrokerProbe, tmp_path: Path
) -> Iterator[Callable[..., Worker]]:
    """Return a function that starts real worker processes; all are stopped after the test."""
    workers: list[Worker] = []

    def start(
        name: str = "w1", wait: bool = True, env: dict[str, str] | None = None, **options: Any
    ) -> Worker:
        full_env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "BROKER_URL": task_broker.url,
            "PYTHONPATH": str(ROOT),
            "WORKER_METRICS_PORT": "0",  # tests that read worker metrics choose a free port
            **(env or {}),
        }
        worker = Worker(name, tmp_path / f"{name}-{len(workers)}.log", full_env, **options)
        workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.stop()
