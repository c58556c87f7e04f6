"""Properties: any arrival order, any duplication, 1 to 4 concurrent workers."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import StatusEvent
from schemas.statuses import EVENT_STATUSES, PROGRESS, is_applied, next_status
from workers.core import store

T0 = datetime(2026, 11, 1, tzinfo=UTC)
MAX_WORKERS = 4


@pytest.fixture(scope="module")
def connections(database_url: str) -> Iterator[list[psycopg.Connection]]:
    conns = [psycopg.connect(database_url) for _ in range(MAX_WORKERS + 1)]
    yield conns
    for conn in conns:
        conn.close()


def make_event(message_id: str, status: str) -> StatusEvent:
    return StatusEvent(
        provider="zapi",
        message_id=message_id,
        status=status,
        raw_status=status.upper(),
        occurred_at=T0 + timedelta(seconds=len(status)),
        received_at=T0,
    )


def apply_concurrently(conns: list[psycopg.Connection], batches: list[list[StatusEvent]]) -> None:
    barrier = threading.Barrier(len(batches))
    errors: list[BaseException] = []

    def work(conn: psycopg.Connection, batch: list[StatusEvent]) -> None:
        try:
            barrier.wait()
            for event in batch:
                with conn.transaction():
                    store.apply_events(conn, [event])
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=pair) for pair in zip(conns, batches, strict=False)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors


arrivals = st.lists(st.sampled_from(EVENT_STATUSES), min_size=1, max_size=14)


@settings(
    max_examples=int(os.environ.get("TICKS_PROPERTY_EXAMPLES", "150")),
    derandomize="TICKS_PROPERTY_EXAMPLES" not in os.environ,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(statuses=arrivals, workers=st.integers(1, MAX_WORKERS), data=st.data())
def test_any_order_any_duplicates_any_workers_end_in_the_rule_table_state(
    connections, statuses, workers, data
):
    message_id = uuid.uuid4().hex
    events = [make_event(message_id, s) for s in data.draw(st.permutations(statuses))]
    batches = [events[i::workers] for i in range(workers)]
    apply_concurrently(connections[:workers], batches)

    reader = connections[MAX_WORKERS]
    with reader.transaction():
        rows = reader.execute(
            "SELECT status, applied FROM status_events WHERE message_id = %s ORDER BY id",
            (message_id,),
        ).fetchall()
        final = reader.execute(
            "SELECT status FROM messages WHERE message_id = %s", (message_id,)
        ).fetchone()[0]
    assert sorted(s for s, _ in rows) == sorted(set(statuses))  # one row per distinct event
    state = None
    for status, applied in rows:  # id order is the order the rules applied them in
        assert applied == is_applied(state, status)
        state = next_status(state, status)
    assert final == state
    if "failed" not in statuses:  # then order cannot matter: the furthest status wins
        progress = [s for s in statuses if s in PROGRESS]
        assert final == (max(progress, key=PROGRESS.index) if progress else None)
