"""The same pipeline on RabbitMQ (BROKER_URL=amqp://...), beside Redis in the same run.

A RabbitMQ node of its own is started from the machine's rabbitmq-server (embedded.LocalRabbitMQ;
RabbitMQ is no Python package). Two figures, each against Redis measured in the same run:

- drain: the backlog posted through the endpoint (the Procfile's server, wrk), then timed
  from the worker's first commit until every callback's event is committed and the queue is
  empty, with the Procfile's worker; and the no-op task's drain of the same kind of backlog
  (Celery's ceiling on RabbitMQ);
- sustained: the paced ramp of bench/sustained.py for Ticks.
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import amqp.exceptions
import kombu
import psutil
import psycopg

from bench.common import (
    BACKLOG,
    TOKEN,
    WEB_APP,
    WORKER_OPTIONS,
    RssPeak,
    free_port,
    http_ok,
    log,
    process,
    wait_until,
    web_argv,
)
from bench.sustained import ramp, worker_argv
from embedded import LocalRabbitMQ, rabbitmq_missing
from workers.brokers.broker import QUEUE


def depth(url: str) -> int:
    """Task messages ready on Ticks' queue (RabbitMQ tells ready ones, not unacknowledged)."""
    with kombu.Connection(url) as conn:
        try:
            return int(conn.channel().queue_declare(QUEUE, passive=True).message_count)
        except amqp.exceptions.NotFound:  # not declared yet: nothing published
            return 0


def empty(url: str) -> None:
    """Delete Ticks' queue (the next publish declares it afresh)."""
    with kombu.Connection(url) as conn:
        conn.channel().queue_delete(QUEUE)


def drain(kind: str, app: str, env: dict[str, str], url: str, sql: str | None, tmp: Path) -> dict:
    """Post the backlog through the endpoint, then time a worker draining it."""
    from bench.backlog import queue_through_endpoint

    empty(url)
    queue_through_endpoint(env, tmp)
    queued = depth(url)
    argv = [sys.executable, "-m", "celery", "-A", app, "worker", *WORKER_OPTIONS]
    argv += ["--queues", QUEUE]
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("TRUNCATE changes, receipts, status_events, messages")
    with (
        psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn,
        process(argv, env, tmp / f"rabbitmq-worker-{kind}.log") as worker,
    ):
        memory = RssPeak(psutil.Process(worker.pid))
        wait_until(lambda: depth(url) < queued, 60, f"{kind} worker on RabbitMQ")
        started = time.monotonic()

        def done() -> bool:
            if depth(url):
                return False
            return sql is None or conn.execute(sql).fetchone()[0] >= BACKLOG

        wait_until(done, 3600, f"{kind} drain on RabbitMQ")
        elapsed = time.monotonic() - started
    result = {
        "messages": queued,
        "seconds": round(elapsed, 1),
        "per_second": round(BACKLOG / elapsed, 1),
        "messages_per_second": round(queued / elapsed, 1),
        "rss_mb": memory.stop(),
    }
    log(
        f"rabbitmq drain {kind}: {queued} messages, {result['messages_per_second']:.0f} "
        f"messages/s, {result['per_second']:.0f} callbacks/s"
    )
    return result


def bench_rabbitmq(env: dict[str, str], database_url: str, broker: Any, tmp: Path) -> dict:
    """Drain and sustained figures of Ticks on RabbitMQ."""
    missing = rabbitmq_missing()
    if missing:
        log(f"rabbitmq: skipped: {missing}")
        return {"skipped": missing}
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        server = LocalRabbitMQ(tmp / "rabbitmq").start()
        stack.callback(server.stop)
        amqp_env = {**env, "BROKER_URL": server.url}
        # The no-op first: the same endpoint fills the queue the same way for both.
        results["noop"] = drain("noop", "bench.noop_app", amqp_env, server.url, None, tmp)
        results["ticks"] = drain(
            "ticks",
            "workers.celery_app",
            amqp_env,
            server.url,
            "SELECT count(*) FROM status_events",
            tmp,
        )
        # Each posting groups callbacks its own way: compared by task messages, not callbacks.
        results["ratio_vs_noop"] = round(
            results["ticks"]["messages_per_second"] / results["noop"]["messages_per_second"], 3
        )
        empty(server.url)
        port = free_port()
        run_env = {**amqp_env, "PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "warning"}
        url = f"http://127.0.0.1:{port}/webhooks/zapi/{TOKEN}"
        stack.enter_context(process(web_argv(WEB_APP), run_env, tmp / "rabbitmq-sus-web.log"))
        stack.enter_context(
            process(
                worker_argv("workers.celery_app", QUEUE, WORKER_OPTIONS),
                amqp_env,
                tmp / "rabbitmq-sus-worker.log",
            )
        )
        wait_until(lambda: http_ok(url.split("/webhooks")[0] + "/healthz"), 30, "web on RabbitMQ")
        time.sleep(3)  # the worker connects
        results["sustained"] = ramp("ticks", url, database_url, lambda: depth(server.url), tmp)
        log(f"rabbitmq sustained: ticks held {results['sustained']['capacity']:.0f}/s")
    return results
