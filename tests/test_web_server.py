"""The web process under its production servers: the Procfile's (granian, app/serve.py) and
the alternative gunicorn config (app/gunicorn_conf.py), each as a platform starts it."""

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

from devserver import procfile_commands
from tests.conftest import API_TOKEN, ROOT, free_port, load_fixture, queued, wait_for
from workers.core.redact import redact_paths

TOKEN = "a-secret-token-never-logged"


# How each server is started: the Procfile's web line, and gunicorn with Ticks' config.
SERVERS = {
    "procfile": [sys.executable, "-m", "app.serve"],
    "gunicorn": [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:app.gunicorn_conf",
        "app:create_app()",
    ],
}
# The server's own logger: its lines are JSON like the app's.
SERVER_LOGGER = {"procfile": "_granian", "gunicorn": "gunicorn.error"}


def test_the_procfile_web_line_is_the_served_one():
    """SERVERS["procfile"] is what the Procfile runs (with python -m for this venv)."""
    assert procfile_commands(ROOT / "Procfile")["web"].split() == ["python", "-m", "app.serve"]


def web_env(database_url: str, redis_url: str, port: int, **settings: str) -> dict[str, str]:
    """The environment a platform gives the web, on the test servers."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BROKER_URL": redis_url,
        "API_TOKEN": API_TOKEN,
        "ZAPI_WEBHOOK_TOKENS": TOKEN,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PYTHONPATH": str(ROOT),
        **settings,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


@pytest.fixture(params=list(SERVERS))
def web(request, database_url, redis_url, broker, tmp_path):
    """Start the web under a production server; yield (base URL, its output's path, server)."""
    port = free_port()
    log_path = tmp_path / "web.log"
    env = web_env(database_url, redis_url, port, LOG_LEVEL="debug")
    with log_path.open("w") as log:
        process = subprocess.Popen(
            SERVERS[request.param], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: reachable(f"{base}/healthz") or process.poll() is not None, 30)
            assert process.poll() is None, log_path.read_text()
            yield base, log_path, request.param
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
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}


def test_tokens_in_webhook_urls_never_reach_the_log(web, broker):
    base, log_path, _ = web
    assert post(f"{base}/webhooks/zapi/{TOKEN}", load_fixture("zapi", "seed_sent")) == 200
    assert post(f"{base}/webhooks/zapi/{TOKEN}x", load_fixture("zapi", "seed_sent")) == 401
    assert post(f"{base}/webhooks/zapi/{TOKEN}", {"ids": "not a list"}) == 422
    output = log_path.read_text()
    assert "accepted provider=zapi events=1" in output  # the app's own line, at debug level
    assert TOKEN not in output


def test_the_log_is_json_lines_naming_each_accepted_callback(web, broker):
    """At INFO, one line per task message names the callbacks it carries (their request ids,
    which each caller got in X-Request-Id); at DEBUG, one line per callback as well."""
    base, log_path, server = web
    status, headers = post_with_headers(
        f"{base}/webhooks/zapi/{TOKEN}", load_fixture("zapi", "seed_sent")
    )
    assert status == 200
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line]
    accepted = [r for r in records if r.get("outcome") == "accepted"]
    [group] = [r for r in accepted if r["level"] == "INFO"]
    assert group["logger"] == "app.queue"
    assert group["request_ids"] == [headers["x-request-id"]]
    assert group["providers"] == ["zapi"]
    assert (group["callbacks"], group["events"]) == (1, 1)
    assert group["message_ids"] == ["999999999999999999999"]
    assert group["task_id"]
    [one] = [r for r in accepted if r["level"] == "DEBUG"]
    assert one["logger"] == "app.webhooks" and one["request_id"] == headers["x-request-id"]
    assert one["provider"] == "zapi" and one["events"] == 1
    assert any(r["logger"] == SERVER_LOGGER[server] for r in records)  # the server's, as JSON


def test_concurrent_callbacks_under_the_production_server_are_all_enqueued(web, broker):
    base, _, _ = web
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
    base, _, _ = web
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


def test_a_stopping_web_answers_the_callbacks_it_holds(database_url, redis_url, broker, tmp_path):
    """SIGTERM while callbacks wait for their group: each is answered, 200 only when it is on
    the queue, and the web exits within its grace period."""
    import signal
    import threading
    import time

    port = free_port()
    # Callbacks held long enough to be caught mid-wait.
    env = web_env(database_url, redis_url, port, GROUP_LINGER_MS="300")
    log_path = tmp_path / "web.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            SERVERS["procfile"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: reachable(f"{base}/healthz"), 30)
            seed = load_fixture("zapi", "seed_sent")
            answers: list[int] = []

            def one(n: int) -> None:
                try:
                    answers.append(
                        post(f"{base}/webhooks/zapi/{TOKEN}", {**seed, "ids": [f"T{n}"]})
                    )
                except OSError:
                    answers.append(0)

            senders = [threading.Thread(target=one, args=(n,)) for n in range(40)]
            for sender in senders:
                sender.start()
                time.sleep(0.005)  # arrivals 5 ms apart: dense, so groups are held open
            process.send_signal(signal.SIGTERM)
            for sender in senders:
                sender.join(10)
            started = time.monotonic()
            process.wait(timeout=15)
            assert time.monotonic() - started < 10
        finally:
            if process.poll() is None:
                process.kill()
    ids = {e["message_id"] for _, events in queued(broker) for e in events}
    assert len(answers) == 40
    assert answers.count(200) == len(ids & {f"T{n}" for n in range(40)})
    assert answers.count(200) > 0, log_path.read_text()
    assert set(answers) <= {200, 503, 0}, answers


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL must be one of"),
        ({"PORT": "70000"}, "PORT must be a whole number from 0 to 65535"),
        ({"WEB_THREADS": "many"}, "WEB_THREADS must be a whole number"),
        ({"TWILIO_AUTH_TOKENS": "t", "PUBLIC_URL": ""}, "PUBLIC_URL"),
    ],
)
def test_a_misconfigured_web_stops_at_once_naming_the_setting(
    database_url, redis_url, tmp_path, settings, said
):
    """Bad settings stop `python -m app.serve` at start, with one line naming the setting,
    and leave no metrics directory behind (a platform restarting it would pile them up)."""
    env = web_env(database_url, redis_url, free_port(), TMPDIR=str(tmp_path), **settings)
    result = subprocess.run(
        SERVERS["procfile"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert said in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not list(tmp_path.glob("ticks-web-metrics-*"))
