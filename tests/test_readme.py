"""The README: its set-up takes an installer from a fresh box to a tablet on the first screen; its test command is
what CI runs, and it leaves a service running from the set-up alone."""

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


def _set_up() -> tuple[int, str]:
    """The README's "Set up" section: its first line's number and its text, up to the test command's paragraph."""
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Set up\n")
    end = text.index("\nRun the tests", start)
    return text[:start].count("\n") + 2, text[start:end]


def test_the_first_screen_takes_an_installer_from_a_fresh_box_to_a_tablet() -> None:
    """Issue 23: the set-up, on the first screen (50 lines), says how a tablet on the clinic's Wi-Fi reaches the box
    (its address, named in its certificate, and the URL the command serves), how to check the self-signed
    certificate's fingerprint, and how the first administrator account is made."""
    first, set_up = _set_up()
    assert first < 20 and first + set_up.count("\n") <= 50, "the set-up fits the first screen"
    (command,) = re.findall(r"```sh\n(.*?)\n```", set_up, re.S)
    names = re.findall(r"tls init((?: --name \S+)+)", command)
    port = re.search(r"edge-app serve --host 0\.0\.0\.0 --port (\d+)", command)
    assert names and port, command
    address = next(n for n in names[0].split()[1::2] if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", n))
    assert "`hostname -I`" in set_up and f"`{address}`" in set_up, "where the address comes from"
    assert f"open `https://{address}:{port.group(1)}`" in set_up, "the URL the tablet opens is the one served"
    assert "SHA-256 fingerprint" in set_up and "`tls init` printed" in set_up and "`edge-app check`" in set_up
    assert "Different: stop" in set_up, "what a mismatch means"
    account = re.search(r"edge-app user add (\S+) --role admin", command)
    assert account and "**The first account**: `user add` above makes the administrator" in set_up
    assert "no default password" in set_up
    link = re.search(r"\(docs/installer\.md#([a-z0-9-]+)\)", set_up)
    headings = re.findall(r"^#+ (.+)$", (ROOT / "docs" / "installer.md").read_text(), re.M)
    slugs = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
    assert link and link.group(1) in slugs, "the link to the installer's full steps leads to its section"
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
