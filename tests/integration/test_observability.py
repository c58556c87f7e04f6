"""Observability as Prometheus sees it: the Procfile's processes, scraped and checked with
Prometheus' own promtool.

The web is started with the Procfile's `web:` line itself, as a platform runs it: its metrics
once counted only in each process's memory under `--config python:app.gunicorn_conf` (the
package was imported, and prometheus_client with it, before the config set its directory),
while every earlier test started gunicorn with the file form of the config.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from devserver import procfile_commands
from tests.conftest import (
    API_TOKEN,
    ROOT,
    WEBHOOK_TOKENS,
    free_port,
    load_fixture,
    skip_or_fail,
    wait_for,
)
from tests.receiver import Receiver

pytestmark = pytest.mark.integration

TOKEN = WEBHOOK_TOKENS["zapi"][0]
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
DOCS = ROOT / "docs"


class Process:
    """One Procfile process, run by a shell as a platform (or honcho) runs it."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.log = log_path.open("w")
        self.process = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {procfile_commands(ROOT / 'Procfile')[name]}"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self.log.close()


@pytest.fixture
def procfile(database_url, redis_url, broker, db, tmp_path) -> Iterator:
    """Start Procfile processes by name on the test database and broker; stop them after."""
    started: list[Process] = []
    bin_dir = str(Path(sys.executable).parent)  # the venv's gunicorn and celery
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": database_url,
        "BROKER_URL": redis_url,
        "API_TOKEN": API_TOKEN,
        "ZAPI_WEBHOOK_TOKENS": TOKEN,
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "WEB_CONCURRENCY": "2",
        "WORKER_METRICS_PORT": str(free_port()),
        "DELIVERIES_METRICS_PORT": str(free_port()),
        "SUBSCRIPTIONS_ALLOW_PRIVATE": "true",
        "TMPDIR": str(tmp_path),  # where the web makes its ticks-web-metrics-* directory
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)

    def start(name: str) -> Process:
        process = Process(name, env, tmp_path / f"{name}.log")
        started.append(process)
        return process

    start.env = env  # type: ignore[attr-defined]
    yield start
    for process in started:
        process.stop()


def web_url(env: dict[str, str]) -> str:
    return f"http://127.0.0.1:{env['PORT']}"


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


def post(url: str, data: bytes, content_type: str = "application/json") -> int:
    request = urllib.request.Request(
        url, data, {"Content-Type": content_type, "Connection": "close"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def start_web(procfile) -> tuple[str, Process]:
    web = procfile("web")
    base = web_url(procfile.env)
    wait_for(lambda: get(f"{base}/healthz")[0] == 200 or web.process.poll() is not None, 30)
    assert web.process.poll() is None, web.output()
    return base, web


def samples(text: str) -> dict[str, float]:
    """Prometheus' text format: each sample's name with its labels, and its value."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            found[series] = float(value)
    return found


def sample_names(text: str) -> set[str]:
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if line[:1] != "#"}


def callbacks(scrape: dict[str, float], outcome: str, reason: str = "") -> float:
    series = f'ticks_callbacks_total{{outcome="{outcome}",provider="zapi",reason="{reason}"}}'
    return scrape.get(series, -1)


def test_the_procfile_web_counts_every_process_on_one_scrape(procfile, tmp_path):
    """Callbacks answered by both of the web's processes, each outcome, on one scrape."""
    base, web = start_web(procfile)
    webhook = f"{base}/webhooks/zapi/{TOKEN}"
    seed = load_fixture("zapi", "seed_sent")
    kinds = {
        "accepted": (webhook, lambda n: json.dumps({**seed, "ids": [f"OBS{n:04d}"]})),
        "unauthorized": (f"{base}/webhooks/zapi/wrong", lambda n: json.dumps(seed)),
        "invalid": (webhook, lambda n: "{"),
        "ignored": (webhook, lambda n: json.dumps({"type": "ReceivedCallback"})),
    }
    expected = {"accepted": 200, "unauthorized": 401, "invalid": 400, "ignored": 200}
    sent = dict.fromkeys(kinds, 0)
    master = psutil.Process(web.process.pid)
    workers = wait_for(lambda: len(pids := [c.pid for c in master.children()]) == 2 and pids)
    [metrics_dir] = tmp_path.glob("ticks-web-metrics-*")

    def answered_by() -> set[int]:
        """The worker processes that have written samples (a file of their own each)."""
        pids = {
            int(m[1]) for p in metrics_dir.iterdir() if (m := re.search(r"_(\d+)\.db$", p.name))
        }
        return pids & set(workers)

    n = 0
    with ThreadPoolExecutor(16) as pool:
        while answered_by() != set(workers) or n < 64:  # concurrent: both processes answer
            batch = [(kind, n + i) for i, kind in enumerate(list(kinds) * 8)]
            n += len(batch)
            answers = pool.map(
                lambda item: (
                    item[0],
                    post(kinds[item[0]][0], kinds[item[0]][1](item[1]).encode()),
                ),
                batch,
            )
            for kind, status in answers:
                assert status == expected[kind], kind
                sent[kind] += 1
            assert n < 2000, f"not both web processes wrote samples to {metrics_dir}"
    status, text = get(f"{base}/metrics", AUTH)
    assert status == 200
    scrape = samples(text)
    assert callbacks(scrape, "accepted") == sent["accepted"]
    assert callbacks(scrape, "unauthorized") == sent["unauthorized"]
    assert callbacks(scrape, "rejected", "invalid_json") == sent["invalid"]
    assert callbacks(scrape, "ignored") == sent["ignored"]
    assert scrape['ticks_events_enqueued_total{provider="zapi"}'] == sent["accepted"]
    webhook_route = 'method="POST",route="/webhooks/<provider>/<token>"'
    answered = sum(
        value
        for series, value in scrape.items()
        if series.startswith("ticks_http_request_duration_seconds_count{")
        and webhook_route in series
    )
    assert answered == sum(sent.values())
    assert scrape["ticks_enqueue_duration_seconds_count"] == sent["accepted"]
    batches = scrape["ticks_publish_batch_callbacks_count"]
    assert 0 < batches <= sent["accepted"]
    assert scrape["ticks_publish_batch_callbacks_sum"] == sent["accepted"]
    # Known series are there at 0 before anything of their kind happened.
    assert callbacks(scrape, "broker_unavailable") == 0
    assert callbacks(scrape, "quarantined") == 0
    assert TOKEN not in text


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        skip_or_fail("promtool not found (Debian: apt-get install prometheus)")
    return path  # type: ignore[return-value]


def promtool_check(what: str, *args: str, stdin: str | None = None) -> None:
    result = subprocess.run(
        [promtool(), "check", *args], input=stdin, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"promtool check {what}: {result.stdout}{result.stderr}"


def test_promtool_accepts_the_alert_rules():
    promtool_check("alerts.yml", "rules", str(DOCS / "alerts.yml"))


def names_in_docs() -> dict[str, set[str]]:
    """Every ticks_* metric name the alert rules and the dashboard query, by file."""
    rules = (DOCS / "alerts.yml").read_text()
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = re.findall(r'"expr": "((?:[^"\\]|\\.)*)"', json.dumps(dashboard))
    pattern = re.compile(r"\bticks_[a-z_]+\b")
    return {
        "alerts.yml": set(pattern.findall(rules)),
        "grafana-dashboard.json": set(pattern.findall(" ".join(exprs))),
    }


def test_every_metric_the_alerts_and_dashboard_query_is_exposed(procfile, db):
    """A short real run of web, worker and delivery worker, scraped: every name that
    docs/alerts.yml and docs/grafana-dashboard.json use is exposed by one of them, and
    promtool accepts each scrape."""
    receiver = Receiver().start()
    try:
        base, _ = start_web(procfile)
        env = procfile.env
        result = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "app", "subscriptions", "add", receiver.url],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        worker = procfile("worker")
        deliveries = procfile("deliveries")
        seed = load_fixture("zapi", "seed_sent")
        for n in range(5):
            body = json.dumps({**seed, "ids": [f"RUN{n}"]}).encode()
            assert post(f"{base}/webhooks/zapi/{TOKEN}", body) == 200
        wait_for(lambda: sum(len(r.changes) for r in receiver.delivered()) >= 5, timeout=60)

        def scrape(port: str, process: Process | None, auth: dict[str, str] | None = None) -> str:
            url = f"http://127.0.0.1:{port}/metrics"
            status, text = wait_for(
                lambda: (answer := get(url, auth))[0] == 200 and answer,
                timeout=60,
            ) or (0, "")
            assert status == 200, process.output() if process else ""
            return text

        scrapes = {
            "web": scrape(env["PORT"], None, AUTH),
            "worker": scrape(env["WORKER_METRICS_PORT"], worker),
            "deliveries": scrape(env["DELIVERIES_METRICS_PORT"], deliveries),
        }
    finally:
        receiver.stop()
    exposed = set().union(*(sample_names(text) for text in scrapes.values()))
    for source, names in names_in_docs().items():
        missing = sorted(names - exposed)
        assert not missing, f"{source} queries metrics no process exposes: {missing}"
    applied = samples(scrapes["worker"])['ticks_events_applied_total{outcome="applied"}']
    assert applied == 5
    for name, text in scrapes.items():
        promtool_check(f"the {name}'s scrape", "metrics", stdin=text)
