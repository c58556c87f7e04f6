"""`make run`'s devserver: start, serve, persist, and stop leaving nothing behind; refuse a
second one, bad configuration and a process that keeps failing at start; `make migrate` and
`./ticks` beside it."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from schemas.registry import REGISTRY
from tests.brokers import empty_rabbitmq
from tests.conftest import FIXTURES, ROOT, free_port, wait_for

pytestmark = pytest.mark.integration
CLEARED = (
    "DATABASE_URL",
    "REDIS_URL",
    "BROKER_URL",
    "API_TOKEN",
    *(setting for record in REGISTRY.values() for setting in record.settings),
    "FLOWER_BASIC_AUTH",
)


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None, None


def clean_env(var: Path, **settings: str) -> dict[str, str]:
    """The test's environment without any Ticks setting, on ``var``."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    return env | {"TICKS_VAR_DIR": str(var), **settings}


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a command from the project folder, as a person beside `make run` would."""
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


class Devserver:
    def __init__(
        self, var: Path, port: int, flower_port: int, env: dict[str, str] | None = None
    ) -> None:
        self.port = port
        # The workers' metrics ports of their own: other runs on this machine may hold 9808.
        self.worker_metrics_port = str(free_port())
        env = clean_env(var) | (env or {})
        env |= {
            "PORT": str(port),
            "FLOWER_PORT": str(flower_port),
            "WEB_CONCURRENCY": "1",
            "WORKER_METRICS_PORT": self.worker_metrics_port,
            "DELIVERIES_METRICS_PORT": str(free_port()),
        }
        self.log_path = var.parent / f"devserver-{time.monotonic_ns()}.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "devserver"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.base = f"http://127.0.0.1:{port}"

    def output(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float) -> float:
        started = time.monotonic()
        # Ready as a person sees it: the banner is printed (once the web answers /readyz).
        wait_for(
            lambda: (
                (
                    http("GET", f"{self.base}/readyz")[0] == 200
                    and "Ctrl-C stops everything" in self.output()
                )
                or self.process.poll() is not None
            ),
            timeout,
            interval=0.2,
        )
        assert self.process.poll() is None, self.output()
        return time.monotonic() - started

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, sig: int = signal.SIGINT) -> float:
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)
        self.log.close()
        return time.monotonic() - started


def is_celery_worker(process: psutil.Process) -> bool:
    """The status worker's main process (not its pool's children, not its keeper, not the
    delivery worker)."""
    try:
        cmdline = process.cmdline()
        parent = process.parent()
    except psutil.NoSuchProcess:
        return False
    return (
        "celery" in " ".join(cmdline[:3])
        and "worker" in cmdline
        and "ticks.deliveries" not in cmdline
        and parent is not None
        and "celery" not in " ".join(parent.cmdline()[:3])
    )


def state_of(var: Path) -> dict[str, tuple[int, bytes]]:
    """Each file directly in var/ (secrets.env, run.env, the lock...), with its mtime."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in var.iterdir() if p.is_file()}


def test_start_serve_stop_restart(tmp_path):
    var = tmp_path / "var"
    # `make migrate` before any `make run`: the embedded database make run will use.
    migrated = run([sys.executable, "-m", "devserver", "migrate"], clean_env(var))
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "embedded PostgreSQL of make run" in migrated.stdout
    assert "applied" in migrated.stderr and "001_initial" in migrated.stderr
    server = Devserver(var, free_port(), free_port())
    try:
        server.wait_ready(timeout=120)
        printed = server.output()
        assert "migrations applied: none pending" in printed
        # The banner comes once the web is up (after its lines), and says where it listens:
        # this machine only, as it does.
        assert printed.index("web.1 ") < printed.index("zapi     webhook URL")
        assert f"listening on 127.0.0.1:{server.port}, this machine only" in printed
        listening = {
            c.laddr.ip
            for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == server.port
        }
        assert listening == {"127.0.0.1"}
        zapi_url = re.search(r"zapi\s+webhook URL: (\S+)", printed).group(1)
        api_token = re.search(r"API_TOKEN: (\S+)", printed).group(1)
        assert (var / "secrets.env").read_text().count("=") >= 4
        children = server.descendants()
        assert any("app.serve" in " ".join(p.cmdline()) for p in children)

        body = (FIXTURES / "zapi" / "seed_sent.json").read_bytes()
        path = zapi_url.split("localhost:", 1)[1].split("/", 1)[1]
        # Meta's line gives the verify token to paste; without an app secret its verification
        # and its POSTs are 404.
        meta = re.search(r"meta\s+webhook URL: (\S+)\s+verify token: (\S+)", printed)
        meta_url = meta.group(1).replace("http://localhost:", "http://127.0.0.1:")
        query = f"hub.mode=subscribe&hub.verify_token={meta.group(2)}&hub.challenge=1158201444"
        assert http("GET", f"{meta_url}?{query}")[0] == 404
        assert "(answers 404 until META_APP_SECRETS is set)" in printed
        assert http("POST", meta_url, b"{}", {"Content-Type": "application/json"})[0] == 404

        # Flower hears task events only once it is listening: readiness is the web's alone.
        flower = re.search(r"flower:\s+(\S+)", printed).group(1)
        wait_for(lambda: http("GET", f"{flower}/api/workers")[0] == 200, timeout=30)
        posted = time.monotonic()
        assert http(
            "POST", f"{server.base}/{path}", body, {"Content-Type": "application/json"}
        ) == (200, {"accepted": 1})
        auth = {"Authorization": f"Bearer {api_token}"}
        message_url = f"{server.base}/messages/zapi/999999999999999999999"
        _status, message = wait_for(
            lambda: (r := http("GET", message_url, headers=auth))[0] == 200 and r, timeout=10
        )
        assert time.monotonic() - posted < 2
        assert message["status"] == "sent"

        # The row is committed a moment before the worker reports the task done.
        wait_for(
            lambda: any(
                t["name"] == "ticks.apply_events" and t["state"] == "SUCCESS"
                for t in (http("GET", f"{flower}/api/tasks")[1] or {}).values()
            ),
            timeout=15,
        )
        # A second `make run` in the same folder refuses at once, naming the first, and
        # touches nothing of it.
        before = state_of(var)
        second = Devserver(var, free_port(), free_port())
        second.process.wait(timeout=30)
        second.stop()
        refusal = second.output()
        assert second.process.returncode != 0
        assert refusal.count("\n") == 1, refusal
        assert f"pid {server.process.pid}" in refusal and f"localhost:{server.port}/" in refusal
        assert state_of(var) == before
        assert (var / "redis" / "redis.sock").exists()
        assert http("GET", f"{server.base}/readyz")[0] == 200

        # The operations commands reach the running service's servers, as the README says:
        # ./ticks, with nothing loaded by hand.
        # A body Ticks cannot read is quarantined (answered 422), for `quarantine list`.
        bad = json.dumps(json.loads(body) | {"status": "VANISHED"}).encode()
        http("POST", f"{server.base}/{path}", bad, {"Content-Type": "application/json"})
        ticks_env = clean_env(
            var,
            VENV=str(Path(sys.executable).parent.parent),
            WORKER_METRICS_PORT=server.worker_metrics_port,
        )
        helped = run([str(ROOT / "ticks"), "--help"], ticks_env)
        assert helped.returncode == 0, helped.stderr
        assert all(c in helped.stdout for c in ("deadletters", "quarantine", "subscriptions"))
        for args in (["deadletters", "list"], ["subscriptions", "list"], ["worker-health"]):
            done = run([str(ROOT / "ticks"), *args], ticks_env)
            assert done.returncode == 0, (args, done.stdout, done.stderr)
        quarantined = wait_for(
            lambda: (r := run([str(ROOT / "ticks"), "quarantine", "list"], ticks_env)).stdout and r,
            timeout=15,
        )
        assert quarantined.returncode == 0 and "\tzapi\tpending\tstatus" in quarantined.stdout
        health_help = run([sys.executable, "-m", "workers.health", "--help"], ticks_env)
        assert health_help.returncode == 0 and "usage:" in health_help.stdout
        # `make migrate` beside a running make run migrates its database; a missing database
        # is one line, not a traceback.
        again_migrated = run([sys.executable, "-m", "devserver", "migrate"], clean_env(var))
        assert again_migrated.returncode == 0, again_migrated.stdout + again_migrated.stderr
        assert "of the running make run" in again_migrated.stdout
        assert "none pending" in again_migrated.stderr
        running_url = (var / "run.env").read_text().split("DATABASE_URL=", 1)[1].split()[0]
        missing = run(
            [sys.executable, "-m", "devserver", "migrate"],
            clean_env(var, DATABASE_URL=running_url.replace("/ticks?", "/nope?")),
        )
        assert missing.returncode == 1
        assert 'database "nope" does not exist' in missing.stderr
        assert "Traceback" not in missing.stderr
        # The status page answers a person who gives the API token as a basic-auth password.
        login = base64.b64encode(f"ops:{api_token}".encode()).decode()
        page = urllib.request.Request(
            f"{server.base}/", headers={"Authorization": f"Basic {login}"}
        )
        with urllib.request.urlopen(page, timeout=10) as response:
            html = response.read().decode()
        assert re.search(r"<th scope=\"row\">zapi</th><td class=\"sent some\">1</td>", html)
        with urllib.request.urlopen(f"{server.base}/static/status.css", timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/css")
        assert http("GET", f"{server.base}/")[0] == 401
        # Flower's own Prometheus metrics count the task too.
        with urllib.request.urlopen(f"{flower}/metrics", timeout=5) as response:
            flower_metrics = response.read().decode()
        assert re.search(r'flower_events_total\{[^}]*task="ticks.apply_events"', flower_metrics)

        # A worker that dies is started again; the web keeps serving meanwhile.
        worker = next(p for p in server.descendants() if is_celery_worker(p))
        worker.kill()
        wait_for(lambda: "worker exited on its own (killed by SIGKILL)" in server.output(), 10)
        assert http("GET", f"{server.base}/healthz")[0] == 200
        again_posted = body.replace(b"999999999999999999999", b"999999999999999999998")
        assert http(
            "POST", f"{server.base}/{path}", again_posted, {"Content-Type": "application/json"}
        ) == (200, {"accepted": 1})
        wait_for(lambda: http("GET", message_url[:-1] + "8", headers=auth)[0] == 200, timeout=60)
        assert any(is_celery_worker(p) and p.pid != worker.pid for p in server.descendants())
    finally:
        children = server.descendants()
        took = server.stop()
    assert took < 10, server.output()
    assert server.process.returncode == 0, server.output()  # Ctrl-C is no failure
    assert not (var / "run.env").exists()
    time.sleep(0.5)
    assert [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []

    again = Devserver(var, free_port(), free_port())
    try:
        assert again.wait_ready(timeout=15) < 15
        assert re.search(r"API_TOKEN: (\S+)", again.output()).group(1) == api_token
        assert (
            http("GET", message_url.replace(server.base, again.base), headers=auth)[1]["status"]
            == "sent"
        )
    finally:
        again.stop(signal.SIGTERM)
    assert again.process.returncode == 0, again.output()


def test_make_run_on_rabbitmq(tmp_path, rabbitmq_url):
    """BROKER_URL=amqp://... make run: no embedded Redis, every endpoint served as on Redis."""
    empty_rabbitmq(rabbitmq_url)
    server = Devserver(tmp_path / "var", free_port(), free_port(), {"BROKER_URL": rabbitmq_url})
    try:
        server.wait_ready(timeout=120)
        printed = server.output()
        assert "embedded Redis" not in printed
        assert not (tmp_path / "var" / "redis").exists()
        zapi_url = re.search(r"zapi\s+webhook URL: (\S+)", printed).group(1)
        api_token = re.search(r"API_TOKEN: (\S+)", printed).group(1)
        auth = {"Authorization": f"Bearer {api_token}"}
        path = zapi_url.split("localhost:", 1)[1].split("/", 1)[1]
        body = (FIXTURES / "zapi" / "seed_sent.json").read_bytes()
        assert http(
            "POST", f"{server.base}/{path}", body, {"Content-Type": "application/json"}
        ) == (200, {"accepted": 1})
        message_url = f"{server.base}/messages/zapi/999999999999999999999"
        _status, message = wait_for(
            lambda: (r := http("GET", message_url, headers=auth))[0] == 200 and r, timeout=30
        )
        assert message["status"] == "sent"
        assert http("GET", f"{server.base}/readyz")[0] == 200
        assert http("GET", f"{server.base}/dead-letters", headers=auth)[0] == 200
        assert http("GET", f"{server.base}/quarantine", headers=auth)[0] == 200
        request = urllib.request.Request(f"{server.base}/metrics", headers=auth)
        with urllib.request.urlopen(request, timeout=5) as response:
            assert "ticks_broker_up 1.0" in response.read().decode()
        request = urllib.request.Request(f"{server.base}/", headers=auth)
        with urllib.request.urlopen(request, timeout=5) as response:
            assert "kept by the broker" in response.read().decode()
        children = server.descendants()
    finally:
        # A closed terminal (SIGHUP) once killed make run alone and left the rest running.
        server.stop(signal.SIGHUP)
        empty_rabbitmq(rabbitmq_url)
    assert server.process.returncode == 0, server.output()
    time.sleep(0.5)
    assert [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []


def test_bad_configuration_stops_make_run_before_anything_starts(tmp_path):
    """The web refuses TWILIO_AUTH_TOKENS without PUBLIC_URL: make run says so, and stops."""
    var = tmp_path / "var"
    server = Devserver(
        var, free_port(), free_port(), {"TWILIO_AUTH_TOKENS": "a-token", "PUBLIC_URL": ""}
    )
    server.process.wait(timeout=60)
    server.stop()
    printed = server.output()
    assert server.process.returncode == 1, printed
    assert "TWILIO_AUTH_TOKENS is set but PUBLIC_URL is not" in printed
    assert "webhook URL" not in printed and "starting it again" not in printed
    assert not (var / "postgres18").exists()


def test_a_process_that_keeps_failing_at_start_stops_make_run(tmp_path):
    """A web that cannot start (WEB_THREADS=0) is tried five times, then make run stops with
    its last lines, non-zero, leaving nothing running."""
    var = tmp_path / "var"
    server = Devserver(var, free_port(), free_port(), {"WEB_THREADS": "0"})
    children: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 120
        while server.process.poll() is None and time.monotonic() < deadline:
            children |= {p.pid: p for p in server.descendants()}
            time.sleep(0.5)
    finally:
        server.stop()
    printed = server.output()
    assert server.process.returncode == 1, printed
    assert printed.count("web exited on its own (exit code 1); starting it again") == 4
    assert "web exited at start 5 times in a row (exit code 1); not starting it again" in printed
    ending = printed[printed.index("web kept failing at start; its last lines:") :]
    assert "web | ticks-web: WEB_THREADS must be a whole number" in ending
    assert "webhook URL" not in printed
    assert not (var / "run.env").exists()
    left = [p for p in children.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert left == []


def test_a_valkey_left_running_is_not_doubled(tmp_path):
    """A make run killed outright can leave its Valkey serving var/redis: a new make run
    refuses to start a second server on the same socket and AOF folder, and leaves it be."""
    from embedded import EmbeddedRedis

    var = tmp_path / "var"
    left = EmbeddedRedis(var / "redis").start()
    try:
        left.client().set("kept", "1")
        server = Devserver(var, free_port(), free_port())
        server.process.wait(timeout=120)
        server.log.close()
        assert server.process.returncode != 0
        assert "a Valkey of an earlier make run still serves" in server.output()
        assert left.client().get("kept") == b"1" and left.process.poll() is None
    finally:
        left.stop()
