"""A fault soak, on each broker: steady callbacks for minutes while faults follow one another
in a shuffled cycle (the worker SIGKILLed whole, the database stopped, the broker restarted),
then an audit: every callback, answered 200 at last (a refused one is posted again a second
later, as providers retry), is in the history exactly once.

Not part of `make test` (marked soak: tests/conftest.py leaves it out unless `-m` names
soak). `make soak` runs it; SOAK_SECONDS (default 240) sets the minutes of faults per broker.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter

import psycopg
import pytest

from tests.brokers import ON_EACH_OWN_BROKER
from tests.faults.helpers import assert_exactly_once, count, events_landed, lifecycle_callbacks
from tests.faults.load import RetryingLoad

pytestmark = [pytest.mark.fault, pytest.mark.soak]
SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "240"))
RATE = 40  # callbacks a second, steady
CALM_SECONDS = 15  # between two faults
DATABASE_DOWN_SECONDS = 10
# A worker killed whole on Redis: what it held comes back after the visibility timeout (an
# hour by default, see docs/RELIABILITY.md's known limits); 10 s here, as in the kill test.
WORKER_ENV = {
    "TICKS_VISIBILITY_TIMEOUT": "10",
    "TICKS_RETRY_BACKOFF_MAX": "5",
    "TICKS_SWEEP_INTERVAL": "2",
    "TICKS_SWEEP_MIN_AGE": "15",
}


@ON_EACH_OWN_BROKER
@pytest.mark.timeout(SOAK_SECONDS + 600)
def test_faults_in_a_shuffled_cycle_under_steady_load_lose_and_double_nothing(
    client, db, own_postgres, own_broker, start_worker, record_property
):
    messages = int(SOAK_SECONDS * RATE / 5)  # 5 callbacks each: 4 statuses and a repeat
    bodies = lifecycle_callbacks("SOAK", messages, seed=28)
    db.close()  # the database goes away: the audit connects afresh
    server, database_url = own_postgres
    workers = [start_worker("soak", pool="prefork", concurrency=2, env=WORKER_ENV)]

    def kill_worker() -> None:
        """SIGKILL the whole worker (an OOM kill, a lost host); a new one starts a second
        later, as `make run` (honcho) or a platform would start it again."""
        workers[-1].kill_hard()
        time.sleep(1)
        workers.append(
            start_worker(f"soak{len(workers)}", pool="prefork", concurrency=2, env=WORKER_ENV)
        )

    def stop_database() -> None:
        server.stop()
        time.sleep(DATABASE_DOWN_SECONDS)
        server.start()

    def restart_broker() -> None:
        own_broker.stop(signal.SIGTERM)
        own_broker.start()

    faults = {"worker SIGKILL": kill_worker, "database stopped": stop_database}
    faults["broker restarted"] = restart_broker
    rng = random.Random(28)
    done: Counter[str] = Counter()
    load = RetryingLoad(client, bodies, RATE).start()
    started = time.monotonic()
    while time.monotonic() - started < SOAK_SECONDS:
        cycle = list(faults)
        rng.shuffle(cycle)
        for name in cycle:
            time.sleep(CALM_SECONDS)
            if time.monotonic() - started >= SOAK_SECONDS:
                break
            faults[name]()
            done[name] += 1
    load.wait_all_accepted(timeout=120 + SOAK_SECONDS)

    with psycopg.connect(database_url, autocommit=True) as conn:
        deadline = time.monotonic() + 180
        while events_landed(conn) < 4 * messages and time.monotonic() < deadline:
            time.sleep(0.5)
        landed = events_landed(conn)
        letters = conn.execute("SELECT task_id, error FROM dead_letters").fetchall()
        assert landed == 4 * messages, (
            f"{landed} of {4 * messages} events landed; dead letters: {letters}; "
            f"the last worker's log ends:\n{workers[-1].output()[-4000:]}"
        )
        assert_exactly_once(conn, "SOAK", messages)
        assert count(conn, "SELECT count(*) FROM dead_letters") == 0, letters
    assert workers[-1].process.poll() is None, workers[-1].output()[-4000:]
    record_property("faults", dict(done))
    record_property("refusals", load.refusals)
    print(
        f"\n{own_broker.name} soak, {SOAK_SECONDS:.0f}s at {RATE}/s: {5 * messages} callbacks, "
        f"{load.refusals} answers 503 (posted again), {dict(done)}; all "
        f"{4 * messages} distinct events landed once"
    )
