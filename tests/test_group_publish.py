"""Group commit: concurrent callbacks share one task message, and none is answered before it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.queue import BATCHER, GroupPublisher, QueueUnavailable
from tests.conftest import queued

ZAPI_URL = "/webhooks/zapi/zapi-secret-one"


def callback(n: int) -> dict:
    return {
        "status": "SENT",
        "ids": [f"GROUP{n:04d}"],
        "momment": 1732280000000 + n,
        "phone": "5511987654321",
        "type": "MessageStatusCallback",
    }


class SlowBroker:
    """A publish function that takes a while, records what it got, and can fail."""

    def __init__(self, seconds: float = 0.05, error: Exception | None = None) -> None:
        self.seconds, self.error = seconds, error
        self.messages: list[tuple[list, int]] = []
        self.lock = threading.Lock()

    def __call__(self, events: list, callbacks: int) -> None:
        time.sleep(self.seconds)
        if self.error is not None:
            raise self.error
        with self.lock:
            self.messages.append((events, callbacks))


def submit_all(publisher: GroupPublisher, count: int) -> list[BaseException | None]:
    """Submit count one-event requests from as many threads; return each one's error."""
    start = threading.Barrier(count)

    def one(n: int) -> BaseException | None:
        start.wait()
        try:
            publisher.submit([{"n": n}])
        except QueueUnavailable as exc:
            return exc
        return None

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_concurrent_requests_through_the_endpoint_share_messages(app, broker, monkeypatch):
    publisher = app.extensions[BATCHER]
    real_publish = publisher.publish

    def slow_publish(events: list, callbacks: int) -> None:
        time.sleep(0.02)  # a busy broker: requests arrive while a message is being published
        real_publish(events, callbacks)

    monkeypatch.setattr(publisher, "publish", slow_publish)
    client_count = 24
    with ThreadPoolExecutor(client_count) as pool:
        statuses = list(
            pool.map(
                lambda n: app.test_client().post(ZAPI_URL, json=callback(n)).status_code,
                range(client_count),
            )
        )
    assert statuses == [200] * client_count
    messages = queued(broker)
    ids = sorted(event["message_id"] for _, events in messages for event in events)
    assert ids == [f"GROUP{n:04d}" for n in range(client_count)]
    assert len(messages) < client_count  # grouped: fewer broker messages than callbacks
    assert broker.zcard("ticks:inflight") == len(messages)  # one ledger entry per message


def test_a_request_alone_is_published_at_once_in_its_own_message():
    broker = SlowBroker(seconds=0)
    publisher = GroupPublisher(broker)
    publisher.submit([{"n": 1}, {"n": 2}])
    assert broker.messages == [([{"n": 1}, {"n": 2}], 1)]


def test_every_event_is_published_exactly_once_and_before_its_answer():
    broker = SlowBroker()
    publisher = GroupPublisher(broker)
    assert submit_all(publisher, 40) == [None] * 40
    published = sorted(event["n"] for events, _ in broker.messages for event in events)
    assert published == list(range(40))
    assert len(broker.messages) < 40
    assert sum(callbacks for _, callbacks in broker.messages) == 40


def test_a_message_holds_at_most_max_events():
    broker = SlowBroker()
    publisher = GroupPublisher(broker, max_events=5)
    assert submit_all(publisher, 30) == [None] * 30
    assert max(len(events) for events, _ in broker.messages) <= 5
    assert sorted(e["n"] for events, _ in broker.messages for e in events) == list(range(30))


@pytest.mark.parametrize("error", [QueueUnavailable("broker down"), RuntimeError("a bug")])
def test_when_the_publish_fails_every_request_in_it_is_refused(error):
    broker = SlowBroker(error=error)
    publisher = GroupPublisher(broker)
    errors = submit_all(publisher, 10)
    assert all(isinstance(exc, QueueUnavailable) for exc in errors)
    assert broker.messages == []


def test_a_request_not_taken_before_its_deadline_is_refused_and_never_published():
    broker = SlowBroker(seconds=1.0)
    publisher = GroupPublisher(broker)
    holder = threading.Thread(target=publisher.submit, args=([{"n": "holder"}],))
    holder.start()
    time.sleep(0.1)  # the holder is publishing
    started = time.monotonic()
    with pytest.raises(QueueUnavailable):
        publisher.submit([{"n": "late"}], deadline=0.3)
    assert time.monotonic() - started < 0.6
    holder.join()
    assert broker.messages == [([{"n": "holder"}], 1)]
    assert not publisher.waiting


def test_the_endpoint_answers_503_when_the_grouped_publish_fails(app, broker, monkeypatch):
    publisher = app.extensions[BATCHER]
    monkeypatch.setattr(publisher, "publish", SlowBroker(error=QueueUnavailable("down")))
    response = app.test_client().post(ZAPI_URL, json=callback(1))
    assert response.status_code == 503
    assert response.json == {"error": "queue unavailable"}
    assert queued(broker) == []


def paced_submits(publisher: GroupPublisher, rate: float, count: int) -> list[float]:
    """Submit one-event requests at a fixed rate from a pool; return each one's wait (s)."""
    waits: list[float] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        started = time.monotonic()
        publisher.submit([{"n": n}])
        with lock:
            waits.append(time.monotonic() - started)

    start = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        for n in range(count):
            time.sleep(max(0.0, start + n / rate - time.monotonic()))
            pool.submit(one, n)
    return waits


def test_at_a_steady_dense_rate_a_message_carries_many_callbacks():
    """Requests that arrive one at a time, never overlapping, still share messages while
    they arrive densely: the group stays open for the linger window."""
    broker = SlowBroker(seconds=0.001)
    publisher = GroupPublisher(broker, linger=0.01)
    waits = paced_submits(publisher, rate=800, count=800)
    published = sorted(e["n"] for events, _ in broker.messages for e in events)
    assert published == list(range(800))
    assert 800 / len(broker.messages) >= 4  # ~8 per 10 ms window at 800/s
    assert sorted(waits)[len(waits) // 2] < 0.05


def test_sparse_requests_are_published_at_once_without_lingering():
    broker = SlowBroker(seconds=0)
    publisher = GroupPublisher(broker, linger=0.15)
    waits = paced_submits(publisher, rate=5, count=8)  # one every 0.2 s: sparse
    assert not publisher.dense()
    assert [callbacks for _, callbacks in broker.messages] == [1] * 8
    assert max(waits) < 0.1  # none held for the 0.15 s linger


def test_a_forked_process_starts_its_own_publisher():
    """gunicorn forks its workers from a preloaded app: the child must not inherit the
    parent's publisher thread state (a thread that does not exist there, a held lock)."""
    import multiprocessing

    broker = SlowBroker(seconds=0)
    publisher = GroupPublisher(broker)
    publisher.submit([{"n": "parent"}])
    assert publisher.thread is not None
    context = multiprocessing.get_context("fork")

    def child(queue) -> None:
        fresh = publisher.thread is None and not publisher.waiting
        publisher.submit([{"n": "child"}], deadline=2)
        queue.put((fresh, broker.messages[-1]))

    results = context.Queue()
    process = context.Process(target=child, args=(results,))
    process.start()
    fresh, last = results.get(timeout=10)
    process.join(timeout=10)
    assert fresh and last == ([{"n": "child"}], 1)


def test_group_linger_setting_is_validated_naming_itself():
    from app.config import load_config

    assert load_config({"GROUP_LINGER_MS": "25"})["GROUP_LINGER_SECONDS"] == 0.025
    assert load_config({})["GROUP_LINGER_SECONDS"] == 0.05
    for value in ("-1", "soon", "5000"):
        with pytest.raises(RuntimeError, match="GROUP_LINGER_MS must be a number of milli"):
            load_config({"GROUP_LINGER_MS": value})


def test_the_publisher_survives_an_unexpected_error_and_serves_the_next_request(monkeypatch):
    import app.metrics

    broker = SlowBroker(seconds=0)
    publisher = GroupPublisher(broker)
    failures = iter([OSError("metrics file gone")])

    def observe(_value: float) -> None:
        error = next(failures, None)
        if error is not None:
            raise error

    monkeypatch.setattr(app.metrics.web_metrics().batch_callbacks, "observe", observe)
    with pytest.raises(QueueUnavailable):
        publisher.submit([{"n": "first"}], deadline=2)
    publisher.submit([{"n": "second"}], deadline=2)
    assert broker.messages == [([{"n": "second"}], 1)]


def test_callers_that_wait_for_their_answer_are_not_held_for_the_whole_linger():
    """A closed loop (Green-API delivers one callback at a time per instance and waits for
    the answer): once every caller is waiting, no more callbacks can come, so the group goes
    out without waiting for the rest of the linger window."""
    broker = SlowBroker(seconds=0.001)
    publisher = GroupPublisher(broker, linger=0.3)
    waits: list[float] = []
    stop_at = time.monotonic() + 2

    def caller(k: int) -> None:
        n = 0
        while time.monotonic() < stop_at:
            started = time.monotonic()
            publisher.submit([{"n": f"{k}-{n}"}])
            waits.append(time.monotonic() - started)
            n += 1

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(waits)[len(waits) // 2] < 0.1  # callers did not wait the window out
    assert len(waits) > 2 / 0.3 * 4  # more than a linger per round trip would allow


def test_one_caller_that_waits_for_each_answer_is_held_far_less_than_the_window():
    """One closed-loop caller (the test client, a provider's single queue): its callbacks
    come back to back, densely, yet each follows its answer, so most are not held at all and
    none waits out the 0.3 s window (held every time, it would wait ~75 ms each)."""
    broker = SlowBroker(seconds=0.001)
    publisher = GroupPublisher(broker, linger=0.3)
    waits = []
    for n in range(200):
        started = time.monotonic()
        publisher.submit([{"n": n}])
        waits.append(time.monotonic() - started)
    assert [callbacks for _, callbacks in broker.messages] == [1] * 200
    assert sum(waits) / len(waits) < 0.03
    assert sorted(waits)[len(waits) // 2] < 0.01  # most not held
    assert max(waits) < 0.15
