"""`pip install .`: the package alone (no checkout on the path) runs web, worker and commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.conftest import API_TOKEN, ROOT, free_port, load_fixture, wait_for

pytestmark = pytest.mark.integration


def test_pip_install_then_web_worker_and_commands_run_from_the_package(
    tmp_path: Path, postgres_url: str, redis_url: str, broker
):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert (target / "app" / "templates" / "status.html").exists()
    assert (target / "bin" / "ticks-migrate").exists()
    assert sorted(p.name for p in (target / "migrations").glob("*.sql"))[0] == "001_initial.sql"
    name = f"ticks_pkg_{uuid.uuid4().hex[:8]}"  # a fresh database: the package's migrations
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = make_conninfo(postgres_url, dbname=name)
    outside = tmp_path / "elsewhere"  # not the checkout: only the installed package imports
    outside.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(target),
        "DATABASE_URL": database_url,
        "BROKER_URL": redis_url,
        "API_TOKEN": API_TOKEN,
        "ZAPI_WEBHOOK_TOKENS": "pkg-token",
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "WORKER_METRICS_PORT": "0",
    }
    migrate = subprocess.run(
        [str(target / "bin" / "ticks-migrate")],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert migrate.returncode == 0, migrate.stderr
    # every migration, found inside the installed package (none from this checkout)
    migrations = len(list((ROOT / "migrations").glob("*.sql")))
    assert f"applied {migrations} migration(s)" in migrate.stderr
    db = psycopg.connect(database_url, autocommit=True)
    web = subprocess.Popen(
        [str(target / "bin" / "ticks-web")],
        cwd=outside,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery_app",
            "worker",
            "--pool",
            "solo",
            "--queues",
            "ticks",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=outside,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_for(up, timeout=60)
        page = urllib.request.Request(f"{base}/", headers={"Authorization": f"Bearer {API_TOKEN}"})
        with urllib.request.urlopen(page, timeout=10) as response:  # the packaged template
            assert b"<html" in response.read().lower()
        # The API's description names the version installed (it once said 1.0.0 of 0.10.0).
        (dist,) = target.glob("ticks-*.dist-info")
        with urllib.request.urlopen(f"{base}/openapi.json", timeout=10) as response:
            assert json.load(response)["info"]["version"] == dist.stem.split("-")[1]
        post = urllib.request.Request(
            f"{base}/webhooks/zapi/pkg-token",
            data=(Path(ROOT) / "tests/fixtures/zapi/seed_sent.json").read_bytes(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(post, timeout=10) as response:
            assert response.status == 200
        message_id = load_fixture("zapi", "seed_sent")["ids"][0]
        wait_for(
            lambda: db.execute(
                "SELECT status FROM messages WHERE message_id = %s", (message_id,)
            ).fetchone(),
            timeout=60,
        )
    finally:
        for process in (web, worker):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        time.sleep(0.1)
    assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
    db.close()
