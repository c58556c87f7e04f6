"""What the benchmark parts share: settings, processes, wrk, the callbacks they post."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
BACKLOG = int(os.environ.get("BENCH_BACKLOG", "50000"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
RATE = int(os.environ.get("BENCH_RATE", "300"))
STATUS_EVENTS = int(os.environ.get("BENCH_STATUS_EVENTS", "3000000"))
ONLY = os.environ.get(
    "BENCH_ONLY", "ingest,drain,end_to_end,sustained,subscription,rabbitmq,status_page,scale,cpu"
).split(",")
TOKEN = "bench-token"
WORKER_CONCURRENCY = "2"
WEB_APP = "app:create_app()"
# Every pipeline's worker runs with these (the Procfile's, quieter).
WORKER_OPTIONS = [
    "--pool",
    "prefork",
    "--concurrency",
    WORKER_CONCURRENCY,
    "--loglevel",
    "WARNING",
    "--without-gossip",
    "--without-mingle",
    "--without-heartbeat",
]


def web_argv(spec: str) -> list[str]:
    """A WSGI app under the Procfile's server (granian): Ticks' own launcher (app/serve.py)
    for Ticks, granian's command with the same settings for the references (bare, naive).
    The environment gives HOST, PORT and WEB_CONCURRENCY."""
    if spec == WEB_APP:
        return [sys.executable, "-m", "app.serve"]
    granian = Path(sys.executable).parent / "granian"
    return [
        "/bin/sh",
        "-c",
        f'exec "{granian}" --interface wsgi --host "${{HOST:-127.0.0.1}}" --port "$PORT" '
        f'--workers "${{WEB_CONCURRENCY:-2}}" --blocking-threads "${{WEB_THREADS:-64}}" '
        f"--no-ws --log-level warning {spec}",
    ]


def log(message: str) -> None:
    print(f"bench | {message}", flush=True)


def callback(message_id: str, status: str = "SENT", offset: int = 0) -> dict[str, Any]:
    return {
        "status": status,
        "ids": [message_id],
        "momment": 1732280000000 + offset,
        "phone": "5511987654321",
        "type": "MessageStatusCallback",
        "instanceId": "bench",
    }


class RssPeak:
    """Sample the RSS of a process tree in the background; keep the peak of the largest
    process and of the whole tree (a prefork worker is a main process and its pool)."""

    def __init__(self, root: psutil.Process) -> None:
        self.root, self.process_peak, self.total_peak = root, 0, 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        while not self.stopped.wait(0.2):
            try:
                sizes = [p.memory_info().rss for p in [self.root, *self.root.children(True)]]
            except psutil.Error:
                continue
            self.process_peak = max(self.process_peak, *sizes)
            self.total_peak = max(self.total_peak, sum(sizes))

    def stop(self) -> dict[str, float]:
        """Stop sampling; return the peaks in MB."""
        self.stopped.set()
        self.thread.join()
        return {
            "process": round(self.process_peak / 2**20, 1),
            "total": round(self.total_peak / 2**20, 1),
        }


@contextmanager
def process(argv: list[str], env: dict[str, str], log_path: Path):
    """Run a process for the duration of a block, its output in a file."""
    with log_path.open("w") as out:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.05)


def http_ok(url: str) -> bool:
    """True when a server answers url with anything but a 5xx."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310
            return response.status < 500
    except urllib.error.HTTPError as error:
        return error.code < 500
    except OSError:
        return False


def wrk(url: str, body: str, connections: int, rate: float | None, tmp: Path) -> dict[str, float]:
    """Drive url with wrk; with ``rate``, each connection paces itself to share that rate."""
    script = tmp / "post.lua"
    delay = f"function delay() return {connections * 1000 / rate:.3f} end" if rate else ""
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
        f'wrk.headers["Content-Type"] = "application/json"\n{delay}\n'
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{SECONDS}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": latency(out, "50%"),
        "p99_ms": latency(out, "99%"),
        "errors": int(non_2xx.group(1)) if non_2xx else 0,
    }


def latency(wrk_output: str, percentile: str) -> float:
    value, unit = re.search(rf"{percentile}\s+([\d.]+)(us|ms|s)", wrk_output).groups()
    return round(float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit], 3)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
