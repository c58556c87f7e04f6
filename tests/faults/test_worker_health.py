"""The worker's health check (workers/health.py), both ways: GET /healthz on its metrics port
and `python -m workers.health`, with PostgreSQL and Redis stopped and started under it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.conftest import ROOT, free_port, wait_for

pytestmark = pytest.mark.fault


def health(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def command(port: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workers.health"],
        cwd=ROOT,
        env={**os.environ, "WORKER_METRICS_PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_worker_health_follows_the_database_the_broker_and_a_frozen_worker(
    own_postgres, own_redis, start_worker
):
    port = free_port()
    worker = start_worker(env={"WORKER_METRICS_PORT": str(port)})
    code, body = wait_for(lambda: (r := health(port))[0] == 200 and r, timeout=30)
    assert body == {
        "consuming": True,
        "loop_seconds_since_tick": body["loop_seconds_since_tick"],
        "database": "ok",
        "status": "ok",
    }
    assert command(port).returncode == 0
    # The same port still serves the worker's metrics.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert "text/plain" in response.headers["Content-Type"]

    own_postgres[0].stop()
    code, body = health(port)
    assert code == 503 and body["database"] == "unavailable" and body["consuming"] is True
    assert "database unavailable" in body["error"]
    assert command(port).returncode == 1
    own_postgres[0].start()
    wait_for(lambda: health(port)[0] == 200, timeout=30)

    own_redis.stop()
    code, body = wait_for(lambda: (r := health(port))[0] == 503 and r, timeout=30)
    assert body["consuming"] is False and "not consuming" in body["error"]
    assert command(port).returncode == 1
    own_redis.start()
    wait_for(lambda: health(port)[0] == 200, timeout=60)

    os.kill(worker.process.pid, signal.SIGSTOP)  # frozen whole: it answers nothing
    try:
        result = command(port)
        assert result.returncode == 1 and "not answering" in result.stderr
    finally:
        os.kill(worker.process.pid, signal.SIGCONT)
    wait_for(lambda: health(port)[0] == 200, timeout=30)
