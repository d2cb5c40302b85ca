"""pytest plugin for `coverage run`: record which test ran each line (the map `covering.py` reads).

A test's own body runs in the context of its node id. Its setup and teardown run in the context `file:<test file>`,
since a fixture shared by the file's tests may compute what later tests check. Imports, collection and child
processes record no context (""): a line seen only there is run against every test.
"""

from __future__ import annotations

from collections.abc import Generator

import coverage
import pytest


def _switch(context: str) -> None:
    cov = coverage.Coverage.current()
    if cov is not None:
        cov.switch_context(context)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    _switch("file:" + item.nodeid.split("::")[0])
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    _switch(item.nodeid)
    try:
        return (yield)
    finally:
        _switch("file:" + item.nodeid.split("::")[0])
