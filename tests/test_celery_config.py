"""Broker settings that the guarantees depend on."""

import os
import random
import subprocess
import sys

from tests.conftest import ROOT
from workers.celery_app import RETRY_BACKOFF_MAX, VISIBILITY_TIMEOUT, app
from workers.guarded import retry_countdown


def test_visibility_timeout_is_above_the_longest_retry_countdown():
    assert VISIBILITY_TIMEOUT >= 2 * RETRY_BACKOFF_MAX
    assert app.conf.broker_transport_options["visibility_timeout"] == VISIBILITY_TIMEOUT


def import_celery_app(**env: str) -> subprocess.CompletedProcess:
    """Import the workers' Celery app in a process of its own, with these settings."""
    return subprocess.run(
        [sys.executable, "-c", "import workers.celery_app"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )


def test_a_backoff_longer_than_the_visibility_timeout_fails_at_start_up():
    result = import_celery_app(TICKS_VISIBILITY_TIMEOUT="60", TICKS_RETRY_BACKOFF_MAX="60")
    assert result.returncode != 0
    assert "TICKS_RETRY_BACKOFF_MAX (60) must be at most half" in result.stderr


def test_tasks_ack_late_and_requeue_on_worker_loss():
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    # A dead-lettered task raises (to read as failed) once its letter is stored: acknowledged,
    # never requeued into a loop.
    assert app.conf.task_acks_on_failure_or_timeout
    assert app.conf.broker_connection_max_retries is None


def test_retry_countdown_grows_exponentially_up_to_the_cap_with_half_jitter():
    rng = random.Random(3)
    for retries in range(20):
        ceiling = min(RETRY_BACKOFF_MAX, 2 * 2**retries)
        for _ in range(20):
            assert ceiling / 2 <= retry_countdown(retries, rng) <= ceiling
    assert retry_countdown(0, rng) <= 2
    assert retry_countdown(30, rng) >= RETRY_BACKOFF_MAX / 2


def test_transport_options_the_ledger_cannot_follow_fail_at_start_up():
    result = import_celery_app(BROKER_TRANSPORT_OPTIONS='{"global_keyprefix": "tenant1:"}')
    assert result.returncode != 0
    assert "global_keyprefix='tenant1:' is not supported" in result.stderr


def test_other_transport_options_are_passed_to_kombu(monkeypatch):
    from workers.celery_app import make_celery

    monkeypatch.setenv("BROKER_TRANSPORT_OPTIONS", '{"master_name": "mymaster"}')
    options = make_celery("redis://127.0.0.1:1/0").conf.broker_transport_options
    assert options["master_name"] == "mymaster"
    assert options["visibility_timeout"] == VISIBILITY_TIMEOUT


def test_a_bare_rediss_url_checks_certificates():
    import ssl

    from workers.celery_app import make_celery

    assert make_celery("rediss://h:6380/0").conf.broker_use_ssl == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED
    }
    assert not make_celery("rediss://h:6380/0?ssl_cert_reqs=none").conf.broker_use_ssl


def test_an_evicting_redis_is_warned_about(broker, redis_url, caplog):
    from workers.brokers.broker import RedisBroker
    from workers.celery_app import make_celery

    before = broker.config_get("maxmemory-policy")["maxmemory-policy"]
    broker.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with caplog.at_level("WARNING", logger="workers.brokers.broker"):
            RedisBroker().check_server(make_celery(redis_url))
        assert "maxmemory-policy is allkeys-lru" in caplog.text
        caplog.clear()
        broker.config_set("maxmemory-policy", "noeviction")
        with caplog.at_level("WARNING", logger="workers.brokers.broker"):
            RedisBroker().check_server(make_celery(redis_url))
        assert caplog.text == ""
    finally:
        broker.config_set("maxmemory-policy", before)
