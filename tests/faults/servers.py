"""Servers a fault test owns, so it can stop, kill and restart them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import kombu

from embedded import EmbeddedPostgres
from tests.conftest import free_port
from workers.migrate import migrate


def migrated_postgres(data: Path) -> tuple[EmbeddedPostgres, str]:
    """Start an embedded PostgreSQL with a migrated `ticks` database; return it and its URL."""
    server = EmbeddedPostgres(data)
    url = server.database("ticks")
    migrate(url)
    return server, url


# Debian's /usr/sbin/rabbitmq-server switches to the rabbitmq user; the real script does not.
RABBITMQ_SERVER = next(
    (
        path
        for path in ("/usr/lib/rabbitmq/bin/rabbitmq-server", shutil.which("rabbitmq-server"))
        if path and os.path.exists(path)
    ),
    "rabbitmq-server",
)


class PrivateRabbitMQ:
    """A RabbitMQ node of the test's own (node name, port, data folder), never the machine's.

    Started from the machine's rabbitmq-server (Debian's package) with no plugins; stopped
    with a signal, restarted on the same data (its durable queues survive).
    """

    def __init__(self, data: Path, config: str = "") -> None:
        self.data = data
        self.port = free_port()
        self.name = f"ticks{self.port}@localhost"
        self.process: subprocess.Popen[bytes] | None = None
        data.mkdir(parents=True, exist_ok=True)
        (data / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n{config}"
        )
        (data / "enabled_plugins").write_text("[].\n")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self, timeout: float = 60) -> PrivateRabbitMQ:
        env = {
            **os.environ,
            "HOME": str(self.data),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.data / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.data / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.data / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.data / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.data / "pid"),
        }
        with (self.data / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                [RABBITMQ_SERVER],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with kombu.Connection(self.url, connect_timeout=1) as conn:
                    conn.ensure_connection(max_retries=1)
                return self
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"RabbitMQ did not start: {(self.data / 'server.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.3)

    def stop(self, how: int = signal.SIGTERM) -> None:
        """Stop the node (SIGTERM: a clean stop; SIGKILL: a crash) and its Erlang processes."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, how)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        # epmd and the node's helpers stay in its process group; none may hold the port.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
