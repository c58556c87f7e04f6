"""Sustained throughput: paced arrivals at fixed rates, stepping up until a pipeline falls behind.

Callbacks arrive as providers send them: at a fixed rate whatever the answers take (wrk with a
pacing script over many connections, not a closed loop of a few), unique message ids, each
sent, then received, then read. For each rate, BENCH_STEP_SECONDS of load, then the figures:

- answered: every callback answered 200 (a non-2xx or a socket error fails the step);
- HTTP p99 <= 100 ms (wrk);
- end to end p99 <= 1 s: each event's committed row (its transaction's time) minus the time
  the endpoint received the callback (a little more than from the 200, so conservative);
- the queue does not grow: task messages waiting over the last 10 s of the load no more than
  over 30 s to 20 s before its end (with some slack), and everything is committed soon after.

A rate is held when all four hold. The sustained capacity is the highest rate held. The bare
Flask endpoint's maximum (wrk, closed loop, as in the ingest part) is measured in the same part
as the reference, and the naive pipeline (bench/naive.py) gets the same ramp. The bare endpoint
is also paced at the first rate Ticks did not hold, for the HTTP latency that gunicorn, Flask
and the machine alone give there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    TOKEN,
    WEB_APP,
    WORKER_OPTIONS,
    free_port,
    http_ok,
    latency,
    log,
    process,
    wait_until,
    web_argv,
    wrk,
)

STEP_SECONDS = int(os.environ.get("BENCH_STEP_SECONDS", "60"))
# Connections stay open between requests (keep-alive, within gunicorn's 2 s); each sends a
# request every PERIOD seconds plus the answer's latency, up to MAX_CONNECTIONS of them.
MAX_CONNECTIONS = 512
PERIOD = float(os.environ.get("BENCH_PERIOD", "0.25"))  # seconds
RATES = [int(r) for r in os.environ.get("BENCH_RATES", "300,600,900,1200,1500,1800").split(",")]
LIGHT_RATE = 50
HTTP_P99_MS = 100
E2E_P99_MS = 1000
# wrk: each connection waits delay() ms after an answer before its next request, so the
# arrival rate is connections * 1000 / delay as long as answers come well within the delay
# (the measured arrival rate is reported, not the asked one). Message ids are unique per
# run; callbacks cycle SENT, RECEIVED, READ per message.
PACED_LUA = """
local n = -1
local statuses = {"SENT", "RECEIVED", "READ"}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local calls = 0
-- The first request of each connection at a random point of the period, not all at once.
function delay()
  calls = calls + 1
  if calls <= %(connections)d then return math.random() * %(delay).3f end
  return %(delay).3f
end
request = function()
  n = n + 1
  local status = statuses[(n %% 3) + 1]
  return wrk.format("POST", "%(path)s", nil, string.format(
    '{"status":"%%s","ids":["%(prefix)s%%d"],"momment":%%d,"phone":"5511987654321",'
    .. '"type":"MessageStatusCallback","instanceId":"bench"}',
    status, math.floor(n / 3), 1732280000000 + n))
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.stderr:write(string.format("result %%d %%d %%d\\n", summary.requests, e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""
# Per pipeline: the events table and how to read (end-to-end ms) of one run's rows.
PIPELINES = {
    "ticks": "status_events",
    "naive": "naive_events",
}
LAG_SQL = """
SELECT count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY lag),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY lag)
FROM (SELECT extract(epoch FROM created_at - received_at) * 1000 AS lag
      FROM {table} WHERE message_id LIKE %s) rows
"""


def paced(
    url: str, prefix: str, rate: float, seconds: int, tmp: Path, connections: int | None = None
) -> dict[str, Any]:
    """Offer ``rate`` callbacks/s for ``seconds`` (over ``connections``, by default one per
    callback a second); return wrk's figures."""
    connections = connections or min(
        MAX_CONNECTIONS, max(4, int(rate * float(os.environ.get("BENCH_CONN_FACTOR", "1"))))
    )
    script = tmp / f"paced-{prefix}.lua"
    path = "/" + url.split("/", 3)[3]
    script.write_text(
        PACED_LUA
        % {
            "delay": connections * 1000 / rate,
            "connections": connections,
            "path": path,
            "prefix": prefix,
        }
    )
    proc = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "--latency",
            "-s",
            str(script),
            url.split("/webhooks")[0],
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    out = proc.stdout
    # Requests answered (any status), non-2xx answers, socket errors.
    answered, non_2xx, errors = (
        int(x) for x in re.search(r"result (\d+) (\d+) (\d+)", proc.stderr).groups()
    )
    accepted, refused = answered - non_2xx, non_2xx
    return {
        "offered": rate,
        "arrived": round((answered + errors) / seconds, 1),
        "accepted": accepted,
        "refused": refused + errors,
        "http_p50_ms": latency(out, "50%"),
        "http_p99_ms": latency(out, "99%"),
    }


def redis_depth(client: Any, queue: str) -> Callable[[], int]:
    """The queue's depth on Redis: task messages waiting and held by workers."""
    return lambda: client.llen(queue) + client.hlen("unacked")


class QueueWatch:
    """Sample the queue's depth once a second."""

    def __init__(self, depth: Callable[[], int]) -> None:
        import threading

        self.depth, self.samples = depth, []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopped.wait(1):
            try:
                depth = self.depth()
            except Exception as exc:  # a missed sample only
                log(f"queue depth not sampled: {exc}")
                continue
            self.samples.append(depth)

    def stop(self) -> list[int]:
        self.stopped.set()
        self.thread.join()
        return self.samples


def growing(samples: list[int], rate: float) -> bool:
    """True when the queue grew over the last 30 s of the load."""
    if len(samples) < 30:
        early, late = samples[: len(samples) // 3], samples[-len(samples) // 3 :]
    else:
        early, late = samples[-30:-20], samples[-10:]
    if not early or not late:
        return False
    slack = max(20.0, rate * 0.1)  # task messages: a tenth of a second of callbacks
    return sum(late) / len(late) > sum(early) / len(early) + slack


def run_step(
    kind: str,
    url: str,
    database_url: str,
    depth: Callable[[], int],
    rate: float,
    seconds: int,
    tmp: Path,
) -> dict[str, Any]:
    """One rate for one pipeline: load, then wait for every accepted callback's row."""
    prefix = f"S{kind[0]}{rate}x{time.monotonic_ns() % 10**8}-"
    watch = QueueWatch(depth)
    figures = paced(url, prefix, rate, seconds, tmp)
    samples = watch.stop()
    stopped = time.monotonic()
    table = PIPELINES[kind]
    sql = LAG_SQL.format(table=table)
    with psycopg.connect(database_url, autocommit=True) as conn:
        deadline = stopped + max(60, seconds)
        while True:
            rows, p50, p99 = conn.execute(sql, (f"{prefix}%",)).fetchone()
            if rows >= figures["accepted"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    figures.update(
        committed=rows,
        seconds_to_commit_rest=round(time.monotonic() - stopped, 1),
        e2e_p50_ms=round(p50 or 0, 1),
        e2e_p99_ms=round(p99 or 0, 1),
        queue_growing=growing(samples, rate),
        queue_at_end=samples[-1] if samples else None,
    )
    figures["held"] = bool(
        figures["refused"] == 0
        and figures["committed"] >= figures["accepted"] > 0
        and figures["http_p99_ms"] <= HTTP_P99_MS
        and figures["e2e_p99_ms"] <= E2E_P99_MS
        and not figures["queue_growing"]
        and figures["arrived"] >= 0.9 * rate
    )
    return figures


def ramp(
    kind: str,
    url: str,
    database_url: str,
    depth: Callable[[], int],
    tmp: Path,
    rates: list[int] | None = None,
    also: Callable[[Any, dict[str, Any]], str] | None = None,
    label: str | None = None,
) -> dict:
    """Step the rate up until a step is not held (then one more step, to be sure).

    ``also``, given the database's time at the step's start and the step, may add figures
    and clear ``held``; it returns what to add to the step's log line."""
    steps = []
    for rate in rates or RATES:
        with psycopg.connect(database_url, autocommit=True) as conn:
            started = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        step = run_step(kind, url, database_url, depth, rate, STEP_SECONDS, tmp)
        extra = also(started, step) if also else ""
        steps.append(step)
        log(
            f"sustained {label or kind} at {rate}/s: arrived {step['arrived']}/s, refused "
            f"{step['refused']}, HTTP p99 {step['http_p99_ms']} ms, end to end p50/p99 "
            f"{step['e2e_p50_ms']}/{step['e2e_p99_ms']} ms, queue "
            f"{'growing' if step['queue_growing'] else 'steady'} ({step['queue_at_end']} at "
            f"the end), rest committed in {step['seconds_to_commit_rest']} s{extra}: "
            f"{'HELD' if step['held'] else 'not held'}"
        )
        if not step["held"] and len([s for s in steps if not s["held"]]) >= 2:
            break
        time.sleep(3)  # let the previous step's tail settle
    held = [s for s in steps if s["held"]]
    best = max(held, key=lambda s: s["arrived"]) if held else None
    return {"steps": steps, "capacity": best["arrived"] if best else 0.0, "at_capacity": best}


def worker_argv(app: str, queue: str, options: list[str]) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", app, "worker", *options, "--queues", queue]


def bench_sustained(env: dict[str, str], database_url: str, broker: Any, tmp: Path) -> dict:
    """The bare endpoint's max, then each pipeline's ramp, and Ticks at a light 50/s."""
    from bench.naive import SCHEMA

    client = broker.client()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(SCHEMA)
    results: dict[str, Any] = {"step_seconds": STEP_SECONDS, "connections": MAX_CONNECTIONS}
    port = free_port()
    run_env = {**env, "PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "warning"}
    url = f"http://127.0.0.1:{port}/webhooks/zapi/{TOKEN}"
    body = json.dumps(
        {
            "status": "SENT",
            "ids": ["BARE"],
            "momment": 1,
            "phone": "5511987654321",
            "type": "MessageStatusCallback",
            "instanceId": "bench",
        }
    )
    with process(web_argv("bench.bare_app:app"), run_env, tmp / "sustained-bare.log"):
        wait_until(lambda: http_ok(url), 30, "bare web")
        wrk(url, body, 16, None, tmp)
        results["bare_max"] = wrk(url, body, 16, None, tmp)["rps"]
    log(f"sustained: bare endpoint max {results['bare_max']:.0f} req/s")
    pipelines = {
        "ticks": (WEB_APP, "workers.celery_app", "ticks", [*WORKER_OPTIONS]),
        "naive": ("bench.naive:web", "bench.naive", "celery", [*WORKER_OPTIONS]),
    }
    for kind, (web_spec, worker_app, queue, options) in pipelines.items():
        client.flushdb()
        with ExitStack() as stack:
            stack.enter_context(process(web_argv(web_spec), run_env, tmp / f"sus-web-{kind}.log"))
            stack.enter_context(
                process(worker_argv(worker_app, queue, options), env, tmp / f"sus-w-{kind}.log")
            )
            wait_until(lambda: http_ok(url.split("/webhooks")[0] + "/healthz"), 30, f"{kind} web")
            time.sleep(3)  # the worker connects
            if kind == "ticks":
                light = run_step(
                    kind,
                    url,
                    database_url,
                    redis_depth(client, queue),
                    LIGHT_RATE,
                    min(STEP_SECONDS, 30),
                    tmp,
                )
                results["light"] = light
                log(
                    f"sustained ticks at {LIGHT_RATE}/s: end to end p50/p99 "
                    f"{light['e2e_p50_ms']}/{light['e2e_p99_ms']} ms, HTTP p99 "
                    f"{light['http_p99_ms']} ms"
                )
            results[kind] = ramp(kind, url, database_url, redis_depth(client, queue), tmp)
    # The bare endpoint paced at the first rate Ticks did not hold: what gunicorn, Flask and
    # this machine give a request's latency there, with nothing behind the endpoint.
    unheld = [s for s in results["ticks"]["steps"] if not s["held"]]
    if unheld:
        rate = unheld[0]["offered"]
        with process(web_argv("bench.bare_app:app"), run_env, tmp / "sustained-bare-paced.log"):
            wait_until(lambda: http_ok(url), 30, "bare web")
            paced_bare = paced(url, "BAREPACED", rate, STEP_SECONDS, tmp)
        results["bare_paced"] = paced_bare
        log(
            f"sustained: bare endpoint paced at {rate}/s: arrived {paced_bare['arrived']}/s, "
            f"HTTP p50/p99 {paced_bare['http_p50_ms']}/{paced_bare['http_p99_ms']} ms"
        )
    results["ratio_vs_bare"] = round(results["ticks"]["capacity"] / results["bare_max"], 3)
    naive = results["naive"]["capacity"]
    results["ratio_vs_naive"] = round(results["ticks"]["capacity"] / naive, 2) if naive else None
    log(
        f"sustained: ticks {results['ticks']['capacity']:.0f}/s = {results['ratio_vs_bare']}x "
        f"bare, {results['ratio_vs_naive']}x naive ({naive:.0f}/s)"
    )
    return results
