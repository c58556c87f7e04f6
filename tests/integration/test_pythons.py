"""`make run` reaches readiness with another Python than the suite's (3.11 to 3.14).

The suite's own interpreter runs `make run` in test_devserver.py; this builds a venv of its
own for each other supported CPython on the machine (on PATH or under pyenv) the way a new
user would, with `make run PYTHON=... VENV=...`, then stops it. The venvs are kept beside the
checkout (`.venv-py3.X`, ignored by git) so later runs install nothing.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, skip_or_fail, wait_for

pytestmark = pytest.mark.integration
SUPPORTED = ("3.11", "3.12", "3.13", "3.14")


def other_pythons() -> dict[str, str]:
    """Supported CPython versions on this machine other than the suite's, newest first."""
    ours = f"{sys.version_info.major}.{sys.version_info.minor}"
    found: dict[str, str] = {}
    for version in reversed(SUPPORTED):
        if version == ours:
            continue
        pyenv = os.path.expanduser(f"~/.pyenv/versions/{version}*/bin/python{version}")
        candidates = [shutil.which(f"python{version}"), *sorted(glob.glob(pyenv))]
        for candidate in candidates:
            if (
                candidate
                and subprocess.run(
                    [candidate, "-c", "import venv, ensurepip"], capture_output=True
                ).returncode
                == 0
            ):
                found[version] = candidate
                break
    return found


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_make_run_reaches_readiness_with_another_python(tmp_path: Path):
    pythons = other_pythons()
    if not pythons:
        skip_or_fail(f"no other CPython of {', '.join(SUPPORTED)} on this machine")
    version, python = next(iter(pythons.items()))  # the newest one
    venv = ROOT / f".venv-py{version}"
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "BROKER_URL", "VIRTUAL_ENV", "PYTHONPATH")
    }
    env |= {
        "TICKS_VAR_DIR": str(tmp_path / "var"),
        "PORT": str(port),
        "FLOWER_PORT": str(free_port()),
        "WEB_CONCURRENCY": "1",
    }
    log = (tmp_path / "make-run.log").open("w")
    process = subprocess.Popen(
        ["make", "run", f"PYTHON={python}", f"VENV={venv}"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: ready(port) or process.poll() is not None, timeout=900, interval=0.5)
        output = (tmp_path / "make-run.log").read_text()
        assert process.poll() is None, output
        interpreter = subprocess.run(
            [str(venv / "bin" / "python"), "--version"], capture_output=True, text=True
        ).stdout
        assert interpreter.startswith(f"Python {version}"), interpreter
        assert "embedded PostgreSQL" in output and "embedded Redis" in output
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
    # Ctrl-C is a clean stop: the devserver exits 0, so make reports no error (it printed
    # "make: *** [Makefile:31: run] Error 143" when honcho's code for a signal came through).
    output = (tmp_path / "make-run.log").read_text()
    assert process.returncode in (0, -signal.SIGINT), output[-3000:]
    assert "make: ***" not in output, output[-3000:]
