"""The outbox's cost: Ticks' sustained capacity with one subscription receiving every change
(a delivery worker as the Procfile runs it, POSTing to a local receiver), against the same
without subscriptions, measured in the same run at the same finer rates (issue 17: >= 0.8x);
once with a POST per change (the default) and once batching BENCH_SUB_BATCH (50) a POST.

With the subscription a rate is held only if, besides the sustained criteria
(bench/sustained.py), every change of the step was delivered (2xx) within 60 s of its end.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    TOKEN,
    WEB_APP,
    WORKER_OPTIONS,
    free_port,
    http_ok,
    log,
    process,
    wait_until,
    web_argv,
)
from bench.sustained import STEP_SECONDS, ramp, redis_depth, worker_argv

# without: no subscription; with: one, a POST per change; batched: one with --batch BATCH.
KINDS = os.environ.get("BENCH_SUB_KINDS", "without,with,batched").split(",")
BATCH = int(os.environ.get("BENCH_SUB_BATCH", "50"))
RATES = [int(r) for r in os.environ.get("BENCH_SUB_RATES", "150,200,250,300,350").split(",")]
UNDELIVERED = """
SELECT (SELECT count(*) FROM deliveries WHERE delivered_at IS NULL)
     + (SELECT count(*) FROM changes c JOIN subscriptions s
        ON (c.txid, c.id) > (s.cursor_txid, s.cursor_id))
"""
DELIVERY_LAG = """
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY lag)
FROM (SELECT extract(epoch FROM delivered_at - first_change_at) * 1000 AS lag
      FROM deliveries WHERE delivered_at >= %s) AS rows
"""


def deliveries_argv() -> list[str]:
    """The Procfile's delivery worker."""
    return [
        *worker_argv("workers.celery_app", "ticks.deliveries", []),
        "--pool",
        "threads",
        "--concurrency",
        "8",
        "--loglevel",
        "WARNING",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def delivered_step(database_url: str, since: Any, step: dict[str, Any]) -> str:
    """Wait until every change is delivered; add how long that took and the delivery lag."""
    stopped = time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            left = conn.execute(UNDELIVERED).fetchone()[0]  # type: ignore[index]
            if left == 0 or time.monotonic() - stopped > 60:
                break
            time.sleep(0.2)
        p50, p99 = conn.execute(DELIVERY_LAG, (since,)).fetchone()  # type: ignore[misc]
    step.update(
        undelivered=left,
        seconds_to_deliver_rest=round(time.monotonic() - stopped, 1),
        delivery_p50_ms=round(p50 or 0, 1),
        delivery_p99_ms=round(p99 or 0, 1),
    )
    step["held"] = step["held"] and left == 0
    return (
        f", delivered p50/p99 {step['delivery_p50_ms']}/{step['delivery_p99_ms']} ms, "
        f"{left} undelivered {step['seconds_to_deliver_rest']} s after"
    )


LABELS = {
    "without": "without a subscription",
    "with": "with a subscription",
    "batched": f"with a subscription, {BATCH} changes a POST",
}


@contextmanager
def pipeline(
    kind: str, env: dict[str, str], run_env: dict[str, str], database_url: str, tmp: Path
) -> Iterator[str]:
    """Web and worker, and for a subscription its delivery worker and a local receiver."""
    port, receiver_port = run_env["PORT"], free_port()
    url = f"http://127.0.0.1:{port}/webhooks/zapi/{TOKEN}"
    with ExitStack() as stack, psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE subscriptions, deliveries")
        stack.enter_context(process(web_argv(WEB_APP), run_env, tmp / f"sub-web-{kind}.log"))
        stack.enter_context(
            process(
                worker_argv("workers.celery_app", "ticks", WORKER_OPTIONS),
                env,
                tmp / f"sub-w-{kind}.log",
            )
        )
        if kind != "without":
            stack.enter_context(
                process(
                    [sys.executable, "-m", "bench.receiver", str(receiver_port)],
                    env,
                    tmp / "sub-receiver.log",
                )
            )
            delivery_env = {
                **env,
                "SUBSCRIPTIONS_ALLOW_PRIVATE": "true",
                "WORKER_METRICS_PORT": "0",
                "DATABASE_POOL_SIZE": "9",  # as the Procfile: one per thread, one for the pump
            }
            stack.enter_context(
                process(deliveries_argv(), delivery_env, tmp / "sub-deliveries.log")
            )
            from workers.outbound import subscriptions

            if not os.environ.get("BENCH_SUB_IDLE"):  # a probe: the worker without work
                batch = BATCH if kind == "batched" else 1
                subscriptions.create(
                    conn, f"http://127.0.0.1:{receiver_port}/ticks", None, None, batch
                )
        wait_until(lambda: http_ok(url.split("/webhooks")[0] + "/healthz"), 30, "web")
        time.sleep(3)  # the workers connect
        yield url


def bench_subscription(env: dict[str, str], database_url: str, broker: Any, tmp: Path) -> dict:
    """Rate by rate, each pipeline in turn (so the machine's drift hits all alike), until a
    pipeline misses two rates."""
    client = broker.client()
    run_env = {**env, "PORT": str(free_port()), "HOST": "127.0.0.1", "LOG_LEVEL": "warning"}
    results: dict[str, Any] = {"step_seconds": STEP_SECONDS, "rates": RATES, "batch": BATCH}
    steps: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for rate in RATES:
        for kind in KINDS:
            if len([s for s in steps[kind] if not s["held"]]) >= 2:
                continue
            client.flushdb()
            with pipeline(kind, env, run_env, database_url, tmp) as url:
                steps[kind] += ramp(
                    "ticks",
                    url,
                    database_url,
                    redis_depth(client, "ticks"),
                    tmp,
                    rates=[rate],
                    also=partial(delivered_step, database_url) if kind != "without" else None,
                    label=LABELS[kind],
                )["steps"]
    for kind, done in steps.items():
        held = [s for s in done if s["held"]]
        results[kind] = {"steps": done, "capacity": max((s["arrived"] for s in held), default=0.0)}
    if "without" not in results:
        return results
    without = results["without"]["capacity"]
    for kind in ("with", "batched"):
        if kind in results and without:
            results[f"ratio_{kind}"] = round(results[kind]["capacity"] / without, 2)
            log(
                f"subscription ({kind}): {results[kind]['capacity']:.0f}/s against "
                f"{without:.0f}/s without = {results[f'ratio_{kind}']}x (target >= 0.8x)"
            )
    return results
