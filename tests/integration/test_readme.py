"""The README's two commands exist and do what it says (the demo itself runs in test_loop.py)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    block = re.search(r"## Two commands.*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README lacks the 'Two commands' block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_names_exactly_demo_and_test():
    assert _readme_commands() == ["make demo", "make test"]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", ci, re.M), ".ci/run must call the README's test command"


@pytest.mark.parametrize(("target", "expected"), [("demo", "-m devtools.demo"), ("test", "-m pytest")])
def test_make_targets_install_then_run(target, expected):
    # `make -n` prints what would run without running it; `-B` forces the install steps to show.
    env = {
        k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")
    }  # may run under `make test`
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert any("-m venv" in line for line in lines), "the target must create its virtualenv"
    assert any("pip install" in line and "constraints.txt" in line for line in lines), "installs must be pinned"
    assert expected in lines[-1]


# The demo function itself (what `make demo` runs) is exercised end to end by
# tests/integration/test_loop.py, which asserts every link of the loop it shows.
