"""CPU time per callback: what each process of a pipeline spends on one callback, at a rate.

The yardstick that moves least with the machine's mood: CPU seconds, read from /proc, divided
by the callbacks committed. For each pipeline (Ticks on Redis, Ticks on RabbitMQ, the naive
pipeline of bench/naive.py), the Procfile's own `web` and `worker` commands (Ticks) run under
paced load (bench/sustained.py's wrk script: unique messages, each sent, received and read) at
each rate of BENCH_CPU_RATES for BENCH_CPU_SECONDS, then until every accepted callback is
committed. Read per process group, from the load's start to the last commit:

- web: the web's process tree; worker: the worker's (main process and pool);
- postgres: the PostgreSQL server's processes; broker: Redis' or RabbitMQ's;
- machine: the whole machine's busy time (/proc/stat) less the load generator's (wrk's).

Beside them, in the same run, the bare endpoint (bench/bare_app.py: parse the JSON, answer)
under each server measured (gunicorn with Ticks' config; granian's WSGI server when it is
installed), paced the same way: its web CPU per request is the reference every ratio is
against, the cheapest server's figure first.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench.common import ROOT, TOKEN, free_port, http_ok, log, process, wait_until
from bench.sustained import paced
from devserver import procfile_commands

RATES = [int(r) for r in os.environ.get("BENCH_CPU_RATES", "300,600").split(",")]
SECONDS = int(os.environ.get("BENCH_CPU_SECONDS", "30"))
# Web processes of the pipelines (the Procfile's default: 2).
WEB_CONCURRENCY = os.environ.get("BENCH_CPU_WEB_CONCURRENCY", "2")
# Providers' connections to the web, kept open, each paced: enough that answers held for a
# group (GROUP_LINGER_MS) do not slow the offered rate.
CONNECTIONS = int(os.environ.get("BENCH_CPU_CONNECTIONS", "256"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
COMMITTED_SQL = {
    "ticks": "SELECT count(*) FROM status_events WHERE message_id LIKE %s",
    "naive": "SELECT count(*) FROM naive_events WHERE message_id LIKE %s",
}
# The bare endpoint's servers: gunicorn as Ticks configures it (app/gunicorn_conf.py), and
# granian's WSGI server (a Rust HTTP server) with as many processes.
BARE_SERVERS = {
    "gunicorn": "gunicorn --config app/gunicorn_conf.py bench.bare_app:app",
    "granian": (
        "granian --interface wsgi --host 127.0.0.1 --port $PORT --workers $WEB_CONCURRENCY "
        "--blocking-threads 64 --no-ws --log-level warning bench.bare_app:app"
    ),
}


def procfile(name: str) -> str:
    """The Procfile's command for one process, as written there."""
    return procfile_commands(ROOT / "Procfile")[name]


def shell(command: str) -> list[str]:
    """Run a Procfile-style command line as a platform does (sh, $PORT expanded)."""
    return ["/bin/sh", "-c", f"exec {command}"]


def tree_seconds(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) of every process in these processes' trees, by pid."""
    seconds: dict[int, float] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for member in members:
            try:
                times = member.cpu_times()
            except psutil.Error:
                continue
            seconds[member.pid] = times.user + times.system
    return seconds


def machine_busy() -> float:
    """Seconds of CPU the whole machine spent busy since boot (all cores)."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def children_seconds() -> float:
    """CPU seconds of this process's waited-for children (wrk, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """CPU spent by named process groups, and by the machine less the load generator."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.start = {name: tree_seconds(pids) for name, pids in groups.items()}
        self.machine = machine_busy()
        self.load = children_seconds()

    def read(self) -> dict[str, float]:
        spent = {}
        for name, pids in self.groups.items():
            before = self.start[name]
            now = tree_seconds(pids)
            spent[name] = sum(value - before.get(pid, 0.0) for pid, value in now.items())
        load = children_seconds() - self.load
        spent["load_generator"] = load
        spent["machine"] = machine_busy() - self.machine - load
        return spent


def committed(database_url: str, kind: str, prefix: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(COMMITTED_SQL[kind], (f"{prefix}%",)).fetchone()[0]  # type: ignore[index]


def step(
    url: str,
    groups: dict[str, list[int]],
    rate: int,
    database_url: str | None,
    kind: str,
    tmp: Path,
) -> dict[str, Any]:
    """Paced load at ``rate``, then (with a database) until every accepted callback is
    committed; the CPU per callback of each group."""
    prefix = f"C{kind[0]}{rate}x{time.monotonic_ns() % 10**8}-"
    meter = Meter(groups)
    figures = paced(url, prefix, rate, SECONDS, tmp, CONNECTIONS)
    rows = figures["accepted"]
    if database_url is not None:
        deadline = time.monotonic() + max(60, SECONDS)
        while (rows := committed(database_url, kind, prefix)) < figures["accepted"]:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
    spent = meter.read()
    per = max(rows, 1)
    result = {
        "offered": rate,
        "arrived": figures["arrived"],
        "accepted": figures["accepted"],
        "refused": figures["refused"],
        "committed": rows,
        "http_p99_ms": figures["http_p99_ms"],
        "cpu_ms": {name: round(seconds * 1000 / per, 3) for name, seconds in spent.items()},
    }
    return result


def settle(seconds: float = 3) -> None:
    time.sleep(seconds)


def bare(env: dict[str, str], tmp: Path) -> dict[str, Any]:
    """The bare endpoint under each server, paced at each rate: web and machine per request."""
    results: dict[str, Any] = {}
    for server, command in BARE_SERVERS.items():
        port = free_port()
        run_env = {**env, "PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "warning"}
        run_env.setdefault("WEB_CONCURRENCY", "2")
        url = f"http://127.0.0.1:{port}/webhooks/zapi/{TOKEN}"
        with process(shell(command), run_env, tmp / f"cpu-bare-{server}.log") as proc:
            wait_until(lambda url=url: http_ok(url), 30, f"bare endpoint under {server}")
            steps = []
            for rate in RATES:
                settle()
                measured = step(url, {"web": [proc.pid]}, rate, None, "bare", tmp)
                steps.append(measured)
                log(
                    f"cpu: bare endpoint under {server} at {rate}/s: web "
                    f"{measured['cpu_ms']['web']} ms, machine {measured['cpu_ms']['machine']} ms "
                    f"per request (HTTP p99 {measured['http_p99_ms']} ms)"
                )
        results[server] = steps
    return results


def pipeline(
    kind: str,
    label: str,
    web: str,
    worker: str,
    env: dict[str, str],
    database_url: str,
    servers: dict[str, list[int]],
    tmp: Path,
) -> list[dict[str, Any]]:
    """One pipeline's web and worker, paced at each rate."""
    port = free_port()
    run_env = {**env, "PORT": str(port), "HOST": "127.0.0.1"}
    base = f"http://127.0.0.1:{port}"
    steps = []
    with ExitStack() as stack:
        web_proc = stack.enter_context(process(shell(web), run_env, tmp / f"cpu-web-{label}.log"))
        worker_proc = stack.enter_context(
            process(shell(worker), run_env, tmp / f"cpu-worker-{label}.log")
        )
        wait_until(lambda: http_ok(f"{base}/healthz"), 60, f"{label} web")
        settle(5)  # the worker connects and starts its housekeeping
        groups = {"web": [web_proc.pid], "worker": [worker_proc.pid], **servers}
        for rate in RATES:
            settle()
            measured = step(f"{base}/webhooks/zapi/{TOKEN}", groups, rate, database_url, kind, tmp)
            steps.append(measured)
            cpu = measured["cpu_ms"]
            log(
                f"cpu: {label} at {rate}/s (arrived {measured['arrived']}/s, committed "
                f"{measured['committed']}/{measured['accepted']}, HTTP p99 "
                f"{measured['http_p99_ms']} ms): per callback web {cpu['web']} ms, worker "
                f"{cpu['worker']} ms, postgres {cpu['postgres']} ms, broker {cpu['broker']} ms, "
                f"machine {cpu['machine']} ms"
            )
    return steps


def postgres_pid(data: Path) -> int:
    """The postmaster of the embedded server whose data lies under ``data``."""
    [pid_file] = data.rglob("postmaster.pid")
    return int(pid_file.read_text().split()[0])


PIPELINES = os.environ.get("BENCH_CPU_PIPELINES", "bare,ticks_redis,ticks_rabbitmq,naive").split(
    ","
)


def bench_cpu(env: dict[str, str], database_url: str, broker: Any, tmp: Path) -> dict:
    """Bare endpoint per server, then Ticks on Redis, Ticks on RabbitMQ and the naive pipeline."""
    from bench.naive import SCHEMA
    from embedded import LocalRabbitMQ, rabbitmq_missing

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(SCHEMA)
    postgres = [postgres_pid(tmp / "pg")]
    # The commands as a platform runs them, from this interpreter's environment (gunicorn,
    # celery and granian beside it).
    env = {**env, "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"}
    results: dict[str, Any] = {"seconds": SECONDS, "rates": RATES}
    if "bare" in PIPELINES:
        results["bare"] = bare(env, tmp)
    redis_servers = {"postgres": postgres, "broker": [broker.process.pid]}
    ticks_env = {**env, "BROKER_URL": env["REDIS_URL"], "WEB_CONCURRENCY": WEB_CONCURRENCY}
    # Experiments: BENCH_CPU_WEB / BENCH_CPU_WORKER replace the Procfile's commands.
    web = os.environ.get("BENCH_CPU_WEB") or procfile("web")
    worker = os.environ.get("BENCH_CPU_WORKER") or procfile("worker")
    results["commands"] = {"web": web, "worker": worker}
    if "ticks_redis" in PIPELINES:
        broker.client().flushdb()
        results["ticks_redis"] = pipeline(
            "ticks", "ticks-redis", web, worker, ticks_env, database_url, redis_servers, tmp
        )
    missing = rabbitmq_missing()
    if "ticks_rabbitmq" not in PIPELINES:
        pass
    elif missing:
        log(f"cpu: Ticks on RabbitMQ not measured: {missing}")
    else:
        node = LocalRabbitMQ(tmp / "cpu-rabbitmq").start()
        try:
            rabbit_env = {**ticks_env, "BROKER_URL": node.url}
            rabbit_servers = {"postgres": postgres, "broker": [node.process.pid]}
            results["ticks_rabbitmq"] = pipeline(
                "ticks",
                "ticks-rabbitmq",
                web,
                worker,
                rabbit_env,
                database_url,
                rabbit_servers,
                tmp,
            )
        finally:
            node.stop()
    if "naive" in PIPELINES:
        # The naive endpoint under the same server as Ticks' (the Procfile's: granian).
        naive_web = BARE_SERVERS["granian"].replace("bench.bare_app:app", "bench.naive:web")
        naive_worker = (
            "celery -A bench.naive worker --queues celery --loglevel INFO --without-gossip "
            "--without-mingle"
        )
        broker.client().flushdb()
        results["naive"] = pipeline(
            "naive", "naive", naive_web, naive_worker, ticks_env, database_url, redis_servers, tmp
        )
    results["summary"] = summary(results)
    return results


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """Each pipeline's figures as ratios to the cheapest bare endpoint at the same rate."""
    out: dict[str, Any] = {}
    if "bare" not in results:
        return out
    for index, rate in enumerate(RATES):
        references = {server: steps[index]["cpu_ms"] for server, steps in results["bare"].items()}
        cheapest = min(references, key=lambda s: references[s]["web"])
        reference = references[cheapest]
        rows = {"reference": {"server": cheapest, **reference}}
        for name in ("ticks_redis", "ticks_rabbitmq", "naive"):
            if name not in results:
                continue
            cpu = results[name][index]["cpu_ms"]
            rows[name] = {
                **cpu,
                "web_ratio": round(cpu["web"] / reference["web"], 2),
                "machine_ratio": round(cpu["machine"] / reference["web"], 2),
            }
        out[str(rate)] = rows
    return out


PROCESSES = ("web", "worker", "postgres", "broker", "machine")
COLUMNS = {"ticks_redis": "Ticks on Redis", "ticks_rabbitmq": "Ticks on RabbitMQ", "naive": "naive"}
# The targets, against the cheapest server's bare request at the same rate.
TARGETS = {"web": "<= 2x bare", "worker": "<= 0.5 ms at 300/s", "machine": "<= 4x bare (aim 3x)"}


def markdown(cpu: dict[str, Any]) -> str:
    """CPU per callback, ms, per process group and rate, beside the bare request."""
    columns = [name for name in COLUMNS if name in cpu]
    servers = list(cpu.get("bare", {}))
    header = ["Rate", "Per callback, ms CPU", *(COLUMNS[c] for c in columns)]
    header += [f"bare Flask ({s})" for s in servers] + ["Target"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, rate in enumerate(cpu["rates"]):
        reference = cpu.get("summary", {}).get(str(rate), {}).get("reference", {})
        for group in PROCESSES:
            cells = [f"{rate}/s", group]
            for column in columns:
                value = cpu[column][index]["cpu_ms"].get(group)
                ratio = ""
                if group in ("web", "machine") and reference.get("web"):
                    ratio = f" ({value / reference['web']:.1f}x)"
                cells.append(f"{value:.3f}{ratio}" if value is not None else "")
            for server in servers:
                value = cpu["bare"][server][index]["cpu_ms"].get(group)
                cells.append(
                    f"{value:.3f}" if value is not None and group in ("web", "machine") else ""
                )
            cells.append(TARGETS.get(group, ""))
            lines.append("| " + " | ".join(cells) + " |")
        arrived = ", ".join(
            f"{COLUMNS[c]} {step['arrived']}/s (HTTP p99 {step['http_p99_ms']} ms)"
            for c in columns
            for step in [cpu[c][index]]
        )
        lines.append(f"| {rate}/s | arrived | {arrived} |" + " |" * (len(header) - 3))
    return "\n".join(lines) + (
        f"\n\nCPU from /proc per process group, {cpu['seconds']} s of paced load a rate over "
        f"{CONNECTIONS} connections, then until every callback is committed, divided by the "
        "callbacks committed; machine: all cores' busy time less the load generator's. Ratios "
        "against the cheapest bare request at that rate.\n"
    )
