"""The README's test command is what CI runs, and it leaves a service running from the README's set-up alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent


def _commands() -> list[str]:
    return re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)


def test_ci_runs_the_readme_s_test_command_as_written() -> None:
    tests = [c for c in _commands() if "pytest" in c]
    assert len(tests) == 1, "one test command in the README"
    assert (ROOT / ".ci" / "run").read_text().rstrip().splitlines()[-1] == tests[0]


def test_the_test_command_installs_nothing_into_the_serving_venv() -> None:
    """The set-up's `.venv` runs the service: reinstalling into it under a running server broke its pages."""
    serve = next(c for c in _commands() if "edge-app serve" in c)
    served = re.search(r"python3 -m venv (\S+)", serve)
    tests = next(c for c in _commands() if "pytest" in c)
    assert served and not re.search(re.escape(served.group(1)) + "/", tests), tests
