"""`make bench`: Ticks beside its references, every figure measured in the same run.

1. Ingest: the webhook endpoint under the production server (the Procfile's), against a bare Flask
   endpoint (parse JSON, answer 200) under the same config; wrk drives both.
2. Drain: a backlog of BENCH_BACKLOG callbacks to committed rows, against a no-op task with
   Ticks' worker settings (Celery's ceiling) and the naive pipeline (bench/naive.py).
3. End to end: callbacks at a steady BENCH_RATE per second, from the endpoint's 200 to the row.
3b. Sustained: paced arrivals at fixed rates, stepping up until the pipeline falls behind, for
   Ticks and the naive pipeline, against the bare endpoint's max (bench/sustained.py); and
   Ticks' end-to-end latency at a light 50/s.
3c. RabbitMQ: the drain (with its no-op ceiling) and the sustained ramp again with
   BROKER_URL=amqp:// on a RabbitMQ node of the bench's own (bench/rabbitmq.py), beside Redis.
4. Memory: peak RSS of a web process and of a worker (main process and pool) under load.
5. Status page: GET / (uncached) over BENCH_STATUS_EVENTS events recorded in the last 48 hours,
   against a bare count of the last 24 hours' events; and migration 004's indexes built on
   that data, against one full scan of the events.
6. Scale: the store's apply rate, GET /messages/... p99 and the status page with 10 million
   history rows over 60 days against 100 thousand, and the apply rate while housekeeping
   runs (bench/scale.py).
Only with BENCH_ONLY=indexes: the store's apply rate with migration 004's indexes, against
the same without them (what the status page costs the hot path).
Servers are embedded (a temporary PostgreSQL and Redis with AOF), like `make run`'s.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg.conninfo import make_conninfo

from bench.backlog import backlog, queue_through_endpoint
from bench.common import (
    BACKLOG,
    ONLY,
    RATE,
    RESULTS,
    ROOT,
    SECONDS,
    STATUS_EVENTS,
    TOKEN,
    WEB_APP,
    WORKER_OPTIONS,
    RssPeak,
    callback,
    free_port,
    http_ok,
    log,
    process,
    wait_until,
    web_argv,
    wrk,
)
from bench.cpu import bench_cpu
from bench.cpu import markdown as cpu_markdown
from bench.rabbitmq import bench_rabbitmq
from bench.scale import bench_scale
from bench.subscription import bench_subscription
from bench.sustained import bench_sustained
from embedded import EmbeddedPostgres, EmbeddedRedis
from workers.core.migrate import migrate


def bench_ingest(
    env: dict[str, str], database_url: str, broker: EmbeddedRedis, tmp: Path
) -> dict[str, Any]:
    """Ticks' endpoint and the bare Flask one, same server (the Procfile's), same load."""
    body = json.dumps(callback("3EB0A1B2C3D4E5F6BENCH"))
    results: dict[str, Any] = {}
    for name, spec in (("bare", "bench.bare_app:app"), ("ticks", WEB_APP)):
        port = str(free_port())
        run_env = {**env, "PORT": port, "HOST": "127.0.0.1", "LOG_LEVEL": "warning"}
        with process(web_argv(spec), run_env, tmp / f"web-{name}.log") as web:
            url = f"http://127.0.0.1:{port}/webhooks/zapi/{TOKEN}"
            wait_until(
                lambda u=url: (
                    http_ok(u.replace(f"/webhooks/zapi/{TOKEN}", "/healthz")) or http_ok(u)
                ),
                30,
                f"{name} web",
            )
            wrk(url, body, 16, None, tmp)  # warm up
            memory = RssPeak(psutil.Process(web.pid))
            peak = wrk(url, body, 16, None, tmp)
            half = wrk(url, body, 4, peak["rps"] / 2, tmp)
            results[name] = {"max": peak, "half_rate": half, "rss_mb": memory.stop()}
        log(
            f"ingest {name}: {peak['rps']:.0f} req/s, p99 {peak['p99_ms']} ms; at half rate "
            f"p99 {half['p99_ms']} ms"
        )
        broker.client().flushdb()
    results["ratio"] = round(results["ticks"]["max"]["rps"] / results["bare"]["max"]["rps"], 3)
    return results


def queue_naively(env: dict[str, str]) -> None:
    """Queue the backlog as the naive producer does: one send_task per callback."""
    from celery import Celery

    from bench.naive import NAIVE_TASK

    celery = Celery("naive", broker=env["REDIS_URL"])
    with celery.producer_or_acquire() as producer:
        for message_id, status, offset in backlog():
            body = callback(message_id, status, offset)
            celery.send_task(NAIVE_TASK, args=[body], producer=producer)


def bench_drain(
    env: dict[str, str], database_url: str, broker: EmbeddedRedis, tmp: Path
) -> dict[str, Any]:
    """Time each pipeline draining the same backlog with the same worker processes.

    Ticks' backlog is posted through its endpoint, so its messages are what a burst produces
    (concurrent callbacks grouped); the no-op reference drains a copy of those very messages;
    the naive pipeline's producer queues one message per callback.
    """
    results: dict[str, Any] = {}
    apps = {
        "ticks": ("workers.celery_app", "ticks", "SELECT count(*) FROM status_events"),
        "noop": ("bench.noop_app", "ticks", None),
        "naive": ("bench.naive", "celery", "SELECT count(*) FROM naive_events"),
    }
    client = broker.client()
    client.flushdb()
    started = time.monotonic()
    queue_through_endpoint(env, tmp)
    ticks_messages = client.llen("ticks")
    log(
        f"drain: {BACKLOG} callbacks posted to the endpoint in {time.monotonic() - started:.0f}s"
        f" became {ticks_messages} task messages"
    )
    ticks_backlog = client.dump("ticks")
    with psycopg.connect(database_url, autocommit=True) as conn:
        from bench.naive import SCHEMA

        conn.execute(SCHEMA)
        for kind, (app_module, queue, counter) in apps.items():
            conn.execute(
                "TRUNCATE changes, receipts, status_events, messages, naive_events, naive_messages"
            )
            client.flushdb()
            if kind == "naive":
                queue_naively(env)
            else:
                client.restore("ticks", 0, ticks_backlog)
            queued = client.llen(queue)
            argv = [
                sys.executable,
                "-m",
                "celery",
                "-A",
                app_module,
                "worker",
                *WORKER_OPTIONS,
                "--queues",
                queue,
            ]
            with process(argv, env, tmp / f"worker-{kind}.log") as worker:
                memory = RssPeak(psutil.Process(worker.pid))
                wait_until(lambda q=queue, n=queued: client.llen(q) < n, 60, f"{kind} worker")
                started = time.monotonic()

                def done(q=queue, sql=counter) -> bool:
                    if client.llen(q) or client.hlen("unacked"):
                        return False
                    return sql is None or conn.execute(sql).fetchone()[0] >= BACKLOG

                wait_until(done, 3600, f"{kind} drain")
                elapsed = time.monotonic() - started
                results[kind] = {
                    "messages": queued,
                    "seconds": round(elapsed, 1),
                    "per_second": round(BACKLOG / elapsed, 1),
                    "rss_mb": memory.stop(),
                }
            log(
                f"drain {kind}: {queued} messages, {results[kind]['per_second']:.0f} "
                f"callbacks/s, worker RSS {results[kind]['rss_mb']} MB (largest process, all)"
            )
    results["ratio_vs_naive"] = round(
        results["ticks"]["per_second"] / results["naive"]["per_second"], 3
    )
    results["ratio_vs_noop"] = round(
        results["ticks"]["per_second"] / results["noop"]["per_second"], 3
    )
    return results


def bench_end_to_end(
    env: dict[str, str], database_url: str, broker: EmbeddedRedis, tmp: Path
) -> dict[str, Any]:
    """At a steady RATE, the time from each 200 to its event's row."""
    import http.client

    broker.client().flushdb()
    port = free_port()
    ticks_web = web_argv(WEB_APP)
    worker_argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        *WORKER_OPTIONS,
        "--queues",
        "ticks",
    ]
    acked: dict[str, float] = {}
    total = RATE * SECONDS * 2
    with ExitStack() as stack:
        stack.enter_context(
            process(
                ticks_web,
                {**env, "PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "warning"},
                tmp / "e2e-web.log",
            )
        )
        stack.enter_context(process(worker_argv, env, tmp / "e2e-worker.log"))
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 30, "web")
        time.sleep(3)  # the worker connects
        start = time.time() + 0.5
        lock = threading.Lock()

        def sender(offset: int, step: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            for n in range(offset, total, step):
                time.sleep(max(0.0, start + n / RATE - time.time()))
                message_id = f"E{n}"
                conn.request(
                    "POST",
                    f"/webhooks/zapi/{TOKEN}",
                    json.dumps(callback(message_id)),
                    {"Content-Type": "application/json"},
                )
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    with lock:
                        acked[message_id] = time.time()

        threads = [threading.Thread(target=sender, args=(i, 8)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with psycopg.connect(database_url, autocommit=True) as conn:
            wait_until(
                lambda: (
                    conn.execute(
                        "SELECT count(*) FROM status_events WHERE message_id LIKE 'E%'"
                    ).fetchone()[0]
                    >= len(acked)
                ),
                120,
                "end-to-end drain",
            )
            rows = conn.execute(
                "SELECT message_id, extract(epoch FROM created_at) "
                "FROM status_events WHERE message_id LIKE 'E%'"
            ).fetchall()
    delays = sorted(max(0.0, float(at) - acked[mid]) * 1000 for mid, at in rows if mid in acked)
    result = {
        "rate": RATE,
        "sent": total,
        "acknowledged": len(acked),
        "p50_ms": round(delays[len(delays) // 2], 1),
        "p99_ms": round(delays[int(len(delays) * 0.99)], 1),
    }
    log(f"end to end at {RATE}/s: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms")
    return result


# Three statuses for each of STATUS_EVENTS / 3 messages, spread evenly over 48 hours up to
# now and inserted in time order (as workers record them); one message in 50 failed.
FILL_MESSAGES = """
INSERT INTO messages (provider, message_id, status, phone, failed_at, failure_reason, created_at)
SELECT (ARRAY['zapi', 'greenapi', 'plug'])[1 + i %% 3], 'M' || i,
       CASE WHEN i %% 50 = 0 THEN 'failed' ELSE (ARRAY['sent', 'received', 'read'])[1 + i %% 3] END,
       '5511999' || i,
       CASE WHEN i %% 50 = 0 THEN now() - (%(n)s - i) * %(step)s * interval '1 second' END,
       CASE WHEN i %% 50 = 0 THEN 'failed: bench' END,
       now() - (%(n)s - i) * %(step)s * interval '1 second'
FROM generate_series(1, %(n)s) i
"""
FILL_EVENTS = """
INSERT INTO status_events (provider, message_id, status, raw_status, occurred_at, received_at,
                           applied, created_at)
SELECT m.provider, m.message_id, s.status, s.status, m.created_at, m.created_at, true,
       m.created_at + s.n * interval '1 second'
FROM messages m CROSS JOIN LATERAL (VALUES ('sent', 0), ('received', 1), ('read', 2)) s(status, n)
ORDER BY m.created_at
"""
DAY_COUNT = "SELECT count(*) FROM status_events WHERE created_at >= now() - interval '24 hours'"
FULL_SCAN = "SELECT count(*) FROM status_events"
STATUS_INDEXES = ("status_events_created_brin", "status_events_failed", "dead_letters_pending")


def median_ms(run, times: int = 7) -> float:
    """The median time of ``times`` runs of ``run()``, in ms, after one to warm up."""
    run()
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    return round(sorted(samples)[times // 2], 1)


def bench_status_page(
    env: dict[str, str], database_url: str, broker: EmbeddedRedis, tmp: Path
) -> dict[str, Any]:
    from app import create_app  # the app reads its settings when created

    messages = STATUS_EVENTS // 3
    log(f"status page: recording {messages * 3} events over 48 hours")
    # A database of its own: the other parts' rows would mix with these.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute('CREATE DATABASE "ticks_status_page"')
    database_url = make_conninfo(database_url, dbname="ticks_status_page")
    migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(FILL_MESSAGES, {"n": messages, "step": 172800 / messages})
        conn.execute(FILL_EVENTS)
        conn.execute("VACUUM ANALYZE")
        [day_events] = conn.execute(DAY_COUNT).fetchone() or [0]
        count_ms = median_ms(lambda: conn.execute(DAY_COUNT).fetchone())
        scan_ms = median_ms(lambda: conn.execute(FULL_SCAN).fetchone())
        migration = (ROOT / "migrations" / "004_status_page.sql").read_text()

        def rebuild() -> None:
            with conn.transaction():
                for index in STATUS_INDEXES:
                    conn.execute(f"DROP INDEX {index}")
            started = time.perf_counter()
            with conn.transaction():
                conn.execute(migration)
            rebuilds.append((time.perf_counter() - started) * 1000)

        rebuilds: list[float] = []
        for _ in range(3):
            rebuild()
    app = create_app(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": env["REDIS_URL"],
            "API_TOKEN": env["API_TOKEN"],
            "STATUS_PAGE_CACHE_SECONDS": 0,
        }
    )
    client = app.test_client()
    auth = {"Authorization": f"Bearer {env['API_TOKEN']}"}

    def view() -> None:
        response = client.get("/", headers=auth)
        if response.status_code != 200 or "did not answer" in response.text:
            raise SystemExit(f"bench: the status page failed: {response.status_code}")

    page_ms = median_ms(view)
    result = {
        "events": messages * 3,
        "events_24h": day_events,
        "page_ms": page_ms,
        "count_24h_ms": count_ms,
        "ratio": round(page_ms / count_ms, 2),
        "migration_ms": round(sorted(rebuilds)[1], 1),
        "full_scan_ms": scan_ms,
        "migration_ratio": round(sorted(rebuilds)[1] / scan_ms, 2),
    }
    log(
        f"status page: {page_ms} ms (count of the day's events {count_ms} ms); "
        f"migration 004 {result['migration_ms']} ms (full scan {scan_ms} ms)"
    )
    return result


def bench_indexes(
    env: dict[str, str], database_url: str, broker: EmbeddedRedis, tmp: Path
) -> dict[str, Any]:
    """What migration 004's indexes cost the hot path: the store applying batches of events
    (in this process, one connection) with them, against the same without them, in
    alternating fresh databases, five rounds."""
    import statistics

    from schemas.events import StatusEvent
    from workers.core import store

    moment = datetime(2026, 11, 1, tzinfo=UTC)
    statuses = ("sent", "received", "read", "failed")

    def apply_rate(url: str, batches: int = 300, size: int = 100) -> float:
        with psycopg.connect(url) as conn:
            started = time.perf_counter()
            for b in range(batches):
                events = [
                    StatusEvent(
                        provider="zapi",
                        message_id=f"m{b}-{i // 4}",
                        status=statuses[(i + b) % 4],
                        raw_status="X",
                        occurred_at=moment,
                        received_at=moment,
                        phone="5511987654321",
                        failure_reason=None,
                    )
                    for i in range(size)
                ]
                with conn.transaction():
                    store.apply_events(conn, events)
            return batches * size / (time.perf_counter() - started)

    rates: dict[str, list[float]] = {"with": [], "without": []}
    with psycopg.connect(database_url, autocommit=True) as admin:
        for round_ in range(5):
            for variant in rates:
                name = f"ticks_indexes_{variant}_{round_}"
                admin.execute(f'CREATE DATABASE "{name}"')
                url = make_conninfo(database_url, dbname=name)
                migrate(url)
                if variant == "without":
                    with psycopg.connect(url, autocommit=True) as conn:
                        for index in STATUS_INDEXES:
                            conn.execute(f"DROP INDEX {index}")
                rates[variant].append(apply_rate(url))
                admin.execute(f'DROP DATABASE "{name}"')
    with_, without = (round(statistics.median(rates[v])) for v in ("with", "without"))
    result = {"with_per_second": with_, "without_per_second": without}
    result["ratio"] = round(with_ / without, 3)
    log(f"store apply with 004's indexes: {with_}/s, without: {without}/s")
    return result


def rss(peaks: dict[str, float]) -> str:
    return f"{peaks['process']} ({peaks['total']})"


def markdown(results: dict[str, Any]) -> str:
    ingest, drain, e2e = results["ingest"], results["drain"], results["end_to_end"]
    status = results["status_page"]
    rows = [
        (
            "Ingest, callbacks/s (wrk, 16 connections)",
            f"{ingest['ticks']['max']['rps']:.0f}",
            f"bare Flask {ingest['bare']['max']['rps']:.0f}",
            f"{ingest['ratio']}x",
            ">= 0.75x",
        ),
        (
            "Ingest p50 / p99 at max, ms",
            f"{ingest['ticks']['max']['p50_ms']} / {ingest['ticks']['max']['p99_ms']}",
            f"{ingest['bare']['max']['p50_ms']} / {ingest['bare']['max']['p99_ms']}",
            "",
            "",
        ),
        (
            "Ingest p99 at half the max rate, ms",
            f"{ingest['ticks']['half_rate']['p99_ms']}",
            f"{ingest['bare']['half_rate']['p99_ms']}",
            "",
            "<= 10 ms",
        ),
        (
            f"Drain, callbacks/s ({BACKLOG} backlog, 2 worker processes)",
            f"{drain['ticks']['per_second']:.0f}",
            f"naive {drain['naive']['per_second']:.0f}",
            f"{drain['ratio_vs_naive']}x",
            ">= 3x",
        ),
        (
            "Drain against Celery's ceiling",
            f"{drain['ticks']['per_second']:.0f}",
            f"no-op task {drain['noop']['per_second']:.0f}",
            f"{drain['ratio_vs_noop']}x",
            ">= 0.8x",
        ),
        (
            f"End to end at {e2e['rate']}/s, p50 / p99 ms",
            f"{e2e['p50_ms']} / {e2e['p99_ms']}",
            "",
            "",
            "p99 <= 250 ms",
        ),
        (
            "Web peak RSS, MB: largest process (all processes)",
            rss(ingest["ticks"]["rss_mb"]),
            f"bare Flask {rss(ingest['bare']['rss_mb'])}",
            "",
            "<= 80 MB per process",
        ),
        (
            "Worker peak RSS, MB: largest process (main + pool)",
            rss(drain["ticks"]["rss_mb"]),
            f"no-op {rss(drain['noop']['rss_mb'])}, naive {rss(drain['naive']['rss_mb'])}",
            "",
            "<= 150 MB",
        ),
        (
            f"Status page, uncached, ms ({status['events_24h']} events in 24 h, "
            f"{status['events']} in all)",
            f"{status['page_ms']}",
            f"count of the 24 h events {status['count_24h_ms']}",
            f"{status['ratio']}x",
            "",
        ),
        (
            "Migration 004 on those events, ms (writes wait this long)",
            f"{status['migration_ms']}",
            f"one full scan {status['full_scan_ms']}",
            f"{status['migration_ratio']}x",
            "",
        ),
    ]
    sustained = results["sustained"]
    at = sustained["ticks"]["at_capacity"] or {}
    naive_at = sustained["naive"]["at_capacity"] or {}
    light = sustained["light"]
    rows[0:0] = [
        (
            f"Sustained, callbacks/s held (paced arrivals, {sustained['step_seconds']} s a rate,"
            f" up to {sustained['connections']} connections)",
            f"{sustained['ticks']['capacity']:.0f}",
            f"bare Flask max {sustained['bare_max']:.0f}",
            f"{sustained['ratio_vs_bare']}x",
            ">= 0.35x (aim 0.45x)",
        ),
        (
            "Sustained against the naive pipeline",
            f"{sustained['ticks']['capacity']:.0f}",
            f"naive {sustained['naive']['capacity']:.0f}",
            f"{sustained['ratio_vs_naive']}x",
            ">= 4x",
        ),
        (
            "At that rate: end to end p50 / p99, HTTP p99, ms",
            f"{at.get('e2e_p50_ms')} / {at.get('e2e_p99_ms')}, {at.get('http_p99_ms')}",
            f"naive {naive_at.get('e2e_p50_ms')} / {naive_at.get('e2e_p99_ms')}, "
            f"{naive_at.get('http_p99_ms')}",
            "",
            "e2e p99 <= 1000, HTTP p99 <= 100",
        ),
        (
            "First rate not held: HTTP p50 / p99, ms",
            next(
                (
                    f"{s['offered']}/s: {s['http_p50_ms']} / {s['http_p99_ms']}"
                    for s in sustained["ticks"]["steps"]
                    if not s["held"]
                ),
                "",
            ),
            (
                f"bare Flask paced: {sustained['bare_paced']['http_p50_ms']} / "
                f"{sustained['bare_paced']['http_p99_ms']}"
                if "bare_paced" in sustained
                else ""
            ),
            "",
            "",
        ),
        (
            f"Light load ({light['offered']}/s): end to end p50 / p99, ms",
            f"{light['e2e_p50_ms']} / {light['e2e_p99_ms']}",
            "",
            "",
            "p99 <= 100 ms",
        ),
    ]
    outbox = results["subscription"]
    rows += [
        (
            "Sustained with one subscription receiving every change (a local receiver), "
            + ("a POST per change" if kind == "with" else f"{outbox['batch']} changes a POST")
            + ", callbacks/s held",
            f"{outbox[kind]['capacity']:.0f}",
            f"without {outbox['without']['capacity']:.0f}",
            f"{outbox[f'ratio_{kind}']}x",
            ">= 0.8x",
        )
        for kind in ("with", "batched")
    ]
    rabbit = results["rabbitmq"]
    if "skipped" in rabbit:
        rows.append(("On RabbitMQ", "not measured", rabbit["skipped"], "", ""))
    else:
        r_at = rabbit["sustained"]["at_capacity"] or {}
        rows += [
            (
                "On RabbitMQ: drain, callbacks/s",
                f"{rabbit['ticks']['per_second']:.0f}",
                f"on Redis {drain['ticks']['per_second']:.0f}",
                f"{rabbit['ticks']['per_second'] / drain['ticks']['per_second']:.2f}x",
                "",
            ),
            (
                "On RabbitMQ: drain against Celery's ceiling there, task messages/s",
                f"{rabbit['ticks']['messages_per_second']:.0f}",
                f"no-op task {rabbit['noop']['messages_per_second']:.0f}",
                f"{rabbit['ratio_vs_noop']}x",
                "",
            ),
            (
                "On RabbitMQ: sustained, callbacks/s held (e2e p99, HTTP p99 ms there)",
                f"{rabbit['sustained']['capacity']:.0f} "
                f"({r_at.get('e2e_p99_ms')}, {r_at.get('http_p99_ms')})",
                f"on Redis {sustained['ticks']['capacity']:.0f}",
                (
                    f"{rabbit['sustained']['capacity'] / sustained['ticks']['capacity']:.2f}x"
                    if sustained["ticks"]["capacity"]
                    else ""
                ),
                "",
            ),
        ]
    scale = results["scale"]
    big, small = (f"{scale['events'][k] / 1e6:g} M" for k in ("large", "small"))
    rows += [
        (
            f"Scale: store apply rate with {big} history rows over 60 days, events/s",
            f"{scale['apply_per_second']['large']}",
            f"{small} rows: {scale['apply_per_second']['small']}",
            f"{scale['apply_ratio']}x",
            ">= 0.9x",
        ),
        (
            f"Scale: GET /messages/... p99 at {big} rows, ms",
            f"{scale['reads']['large']['message_p99_ms']}",
            f"{small} rows: {scale['reads']['small']['message_p99_ms']}",
            f"{scale['message_p99_ratio']}x",
            "",
        ),
        (
            f"Scale: status page (uncached) at {big} rows, ms",
            f"{scale['reads']['large']['status_page_ms']}",
            f"{small} rows: {scale['reads']['small']['status_page_ms']}",
            f"{scale['status_page_ratio']}x",
            "",
        ),
        (
            f"Scale: apply rate keeping the insight counts at {big} rows, events/s",
            f"{scale['insights']['apply_per_second']['with']}",
            f"without them {scale['insights']['apply_per_second']['without']}",
            f"{scale['insights']['ratio']}x",
            ">= 0.95x",
        ),
        (
            "Scale: GET /insights, a day of 1 M messages (all instances; one by hour), ms",
            f"{scale['insights']['query']['day_all_ms']}; "
            f"{scale['insights']['query']['day_one_by_hour_ms']}",
            "",
            "",
            "<= 200 ms",
        ),
        (
            f"Scale: apply rate while housekeeping runs at {big} rows, events/s",
            f"{scale['housekeeping']['during_per_second']}",
            f"just before {scale['housekeeping']['before_per_second']}",
            f"{scale['housekeeping']['ratio']}x",
            "",
        ),
    ]
    lines = ["| Measure | Ticks | Reference | Ratio | Target |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    table = "\n".join(lines) + f"\n\nMeasured {results['when']} on {results['machine']}.\n"
    return table + "\n" + cpu_markdown(results["cpu"])


def main() -> int:
    if not shutil.which("wrk"):
        print(
            "bench: wrk is needed as the load generator: sudo apt-get install wrk", file=sys.stderr
        )
        return 2
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ticks-bench-") as tmpdir, ExitStack() as stack:
        tmp = Path(tmpdir)
        postgres = EmbeddedPostgres(tmp / "pg")
        stack.callback(postgres.cleanup)
        database_url = postgres.database("ticks")
        migrate(database_url)
        broker = EmbeddedRedis(tmp / "redis").start()
        stack.callback(broker.stop)
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": broker.url,
            "API_TOKEN": "bench-api",
            "ZAPI_WEBHOOK_TOKENS": TOKEN,
            "PYTHONPATH": str(ROOT),
        }
        results: dict[str, Any] = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
            "backlog": BACKLOG,
        }
        benches = {
            "ingest": bench_ingest,
            "drain": bench_drain,
            "end_to_end": bench_end_to_end,
            "sustained": bench_sustained,
            "subscription": bench_subscription,
            "rabbitmq": bench_rabbitmq,
            "status_page": bench_status_page,
            "scale": bench_scale,
            "cpu": bench_cpu,
        }
        # Run only when named in BENCH_ONLY, and then printed, not kept.
        extras = {"indexes": bench_indexes}
        for name, bench in {**benches, **extras}.items():
            if name in ONLY:
                results[name] = bench(env, database_url, broker, tmp)
    if set(ONLY) != set(benches):  # a partial run: shown, not kept as the latest table
        print(json.dumps(results, indent=2))
        if "cpu" in results:
            print("\n" + cpu_markdown(results["cpu"]))
        return 0
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (RESULTS / "latest.md").write_text(table)
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
