"""The web process as the Procfile runs it: gunicorn with app/gunicorn_conf.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import API_TOKEN, ROOT, free_port, load_fixture, queued, wait_for
from workers.redact import redact_paths

TOKEN = "a-secret-token-never-logged"


@pytest.fixture
def web(database_url, redis_url, broker, tmp_path):
    """Start gunicorn with the production config; yield (base URL, its output's path)."""
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BROKER_URL": redis_url,
        "API_TOKEN": API_TOKEN,
        "ZAPI_WEBHOOK_TOKENS": TOKEN,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "debug",
        "PYTHONPATH": str(ROOT),
    }
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--config",
                "app/gunicorn_conf.py",
                "app:create_app()",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: reachable(f"{base}/healthz"), timeout=30)
            yield base, log_path
        finally:
            process.terminate()
            process.wait(timeout=20)


def reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def post(url: str, body: object) -> int:
    return post_with_headers(url, body)[0]


def post_with_headers(url: str, body: object) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


def test_tokens_in_webhook_urls_never_reach_the_log(web, broker):
    base, log_path = web
    assert post(f"{base}/webhooks/zapi/{TOKEN}", load_fixture("zapi", "seed_sent")) == 200
    assert post(f"{base}/webhooks/zapi/{TOKEN}x", load_fixture("zapi", "seed_sent")) == 401
    assert post(f"{base}/webhooks/zapi/{TOKEN}", {"ids": "not a list"}) == 422
    output = log_path.read_text()
    assert "accepted provider=zapi events=1" in output  # the app's own line, at debug level
    assert TOKEN not in output


def test_the_log_is_json_lines_with_one_line_per_callback(web, broker):
    base, log_path = web
    status, headers = post_with_headers(
        f"{base}/webhooks/zapi/{TOKEN}", load_fixture("zapi", "seed_sent")
    )
    assert status == 200
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line]
    [accepted] = [r for r in records if r.get("outcome") == "accepted"]
    assert accepted["request_id"] == headers["X-Request-Id"]
    assert accepted["provider"] == "zapi"
    assert accepted["events"] == 1
    assert accepted["message_ids"] == ["999999999999999999999"]
    assert accepted["level"] == "INFO" and accepted["logger"] == "app.webhooks"
    assert any(r["logger"] == "gunicorn.error" for r in records)  # gunicorn's own, as JSON


def test_concurrent_callbacks_under_the_production_server_are_all_enqueued(web, broker):
    base, _ = web
    bodies = [{**load_fixture("zapi", "seed_sent"), "ids": [f"GUNI{n:03d}"]} for n in range(64)]
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda b: post(f"{base}/webhooks/zapi/{TOKEN}", b), bodies))
    assert statuses == [200] * 64
    ids = sorted(e["message_id"] for _, events in queued(broker) for e in events)
    assert ids == [f"GUNI{n:03d}" for n in range(64)]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("POST /webhooks/zapi/s3cr3t HTTP/1.1", "POST /webhooks/zapi/*** HTTP/1.1"),
        ('"/webhooks/plug/abc?x=1"', '"/webhooks/plug/***?x=1"'),
        ("POST /webhooks/greenapi", "POST /webhooks/greenapi"),  # header token: no path token
    ],
)
def test_webhook_paths_are_redacted(line, expected):
    assert redact_paths(line) == expected


def test_metrics_add_up_every_worker_process(web, broker):
    base, _ = web
    for n in range(20):
        body = {**load_fixture("zapi", "seed_sent"), "ids": [f"MET{n:02d}"]}
        assert post(f"{base}/webhooks/zapi/{TOKEN}", body) == 200
    pattern = re.compile(
        r'^ticks_callbacks_total\{outcome="accepted",provider="zapi",reason=""\} (\S+)$', re.M
    )
    for _ in range(6):  # whichever process answers the scrape, it counts them all
        request = urllib.request.Request(
            f"{base}/metrics", headers={"Authorization": f"Bearer {API_TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            text = response.read().decode()
        assert float(pattern.search(text).group(1)) == 20
        assert TOKEN not in text
