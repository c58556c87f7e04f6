"""CI's script is what a clean clone runs: it must parse and end in the README's test command.

A bad edit once pasted a block inside its comment line; bash refused the whole file (exit 2 after
0 s) and CI ran nothing, while every test passed locally.
"""

from __future__ import annotations

import subprocess

from tests.conftest import ROOT

SCRIPT = ROOT / ".ci" / "run"


def test_the_ci_script_parses():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_ci_script_runs_make_test_and_nothing_weaker():
    lines = [line.strip() for line in SCRIPT.read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert commands[0] == "set -euo pipefail"
    assert commands[-1] == "make test"
    assert "make test" in (ROOT / "README.md").read_text()
