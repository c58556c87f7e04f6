"""A real HTTP receiver for outbound webhooks, started by a test: it records every POST and
answers as the test says (a status, after a delay, or by closing the connection)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from workers.outbound.post import sign


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes
    answered: int | None = None  # None: the connection was closed, or the sender gave up

    @property
    def document(self) -> Any:
        return json.loads(self.body)

    @property
    def changes(self) -> list[dict[str, Any]]:
        document = self.document
        return document if isinstance(document, list) else [document]


@dataclass
class Answer:
    status: int = 200
    delay: float = 0.0
    close: bool = False  # drop the connection without an answer


@dataclass
class Receiver:
    """Answers 200 unless ``behaviour`` (given each POST's number from 0, and the POST)
    says otherwise."""

    behaviour: Callable[[int, Received], Answer] = lambda n, r: Answer()
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                got = Received(
                    time.monotonic(),
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length),
                )
                with receiver.lock:
                    number = len(receiver.received)
                    receiver.received.append(got)
                answer = receiver.behaviour(number, got)
                if answer.delay:
                    time.sleep(answer.delay)
                if answer.close:
                    self.close_connection = True
                    self.connection.close()
                    return
                # Recorded before the answer leaves: a sender may read it and look at
                # delivered() before this thread runs again (a flake seen in CI's timing).
                got.answered = answer.status
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:  # the sender gave up waiting
                    got.answered = None

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/ticks?token=receiver"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def delivered(self) -> list[Received]:
        """The POSTs answered 2xx, in the order they arrived."""
        with self.lock:
            return [r for r in self.received if r.answered is not None and r.answered < 300]


def verified(secret: str, received: Received) -> bool:
    """Standard Webhooks verification, as a receiver would do it: one of the signatures
    matches, and the timestamp is recent."""
    webhook_id = received.headers["webhook-id"]
    timestamp = int(received.headers["webhook-timestamp"])
    if abs(time.time() - timestamp) > 300:
        return False
    expected = sign(secret, webhook_id, timestamp, received.body)
    return expected in received.headers["webhook-signature"].split(" ")
