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


def test_a_backoff_longer_than_the_visibility_timeout_fails_at_start_up():
    env = {**os.environ, "TICKS_VISIBILITY_TIMEOUT": "60", "TICKS_RETRY_BACKOFF_MAX": "60"}
    result = subprocess.run(
        [sys.executable, "-c", "import workers.celery_app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "TICKS_RETRY_BACKOFF_MAX (60) must be at most half" in result.stderr


def test_tasks_ack_late_and_requeue_on_worker_loss():
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.broker_connection_max_retries is None


def test_retry_countdown_grows_exponentially_up_to_the_cap_with_half_jitter():
    rng = random.Random(3)
    for retries in range(20):
        ceiling = min(RETRY_BACKOFF_MAX, 2 * 2**retries)
        for _ in range(20):
            assert ceiling / 2 <= retry_countdown(retries, rng) <= ceiling
    assert retry_countdown(0, rng) <= 2
    assert retry_countdown(30, rng) >= RETRY_BACKOFF_MAX / 2
