"""Run a mutant against the tests that run the line it changes, not against every test of its module.

    python covering.py MAP MODULE TEST_FILE...      (cosmic-ray's test command, in the clone)

`record` runs the module's test files once under coverage (with the `contexts` plugin) and writes MAP: for each
line of the module, the tests that ran it. A mutant's changed lines are read from `git diff` against the clone's
commit and widened to their whole statement (a multi-line call records its lines unevenly). Its tests are the node
ids that ran those lines, the whole files whose fixtures ran them, or every file (a line run at import or outside
any test), and every file too where no test runs them in its own process (they may run in a child process, which
records no test). A test that does not run a mutant's line cannot tell it from the original, short of state kept
from one test to the next; a test left out by mistake can only make a mutant survive, never kill one, so the score
is at worst an underestimate, and each survivor is read anyway.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def record(clone: Path, module: str, test_files: list[str], env: dict[str, str]) -> Path:
    """Run `test_files` under coverage in `clone`; write and return the map of `module`'s lines to their tests."""
    name = module.replace("/", "_").removesuffix(".py")
    rc, data, out = clone / f"cr-{name}.coveragerc", clone / f"cr-{name}.coverage", clone / f"cr-{name}.lines.json"
    rc.write_text(
        f"[run]\ninclude = {module}\nparallel = True\nconcurrency = multiprocessing, thread\ndata_file = {data}\n"
    )
    env = {**env, "PYTHONPATH": os.pathsep.join([env["PYTHONPATH"], str(HERE)])}
    coverage = [sys.executable, "-m", "coverage"]
    tests = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "contexts", *test_files]
    subprocess.run([*coverage, "run", f"--rcfile={rc}", *tests], cwd=clone, env=env, check=False)
    subprocess.run([*coverage, "combine", f"--rcfile={rc}"], cwd=clone, env=env, check=True)

    from coverage import CoverageData

    covdata = CoverageData(basename=str(data))
    covdata.read()
    path = next(f for f in covdata.measured_files() if f.endswith(module))
    lines = covdata.contexts_by_lineno(path)
    out.write_text(json.dumps({str(n): sorted(c) for n, c in lines.items()}))
    return out


def _changed_lines(module: str) -> set[int]:
    """The module's lines (numbered as in the commit) that the mutant changes."""
    diff = subprocess.run(["git", "diff", "-U0", "--no-color", "--", module], capture_output=True, text=True)
    lines: set[int] = set()
    for start, count in re.findall(r"^@@ -(\d+)(?:,(\d+))? ", diff.stdout, flags=re.M):
        first, n = int(start), int(count or 1)
        lines.update(range(first, first + max(n, 1)))
    return lines


def _statement_lines(source: str, line: int) -> range:
    """The lines of the innermost statement holding `line`; of a compound statement, its header only."""
    best: ast.AST | None = None
    for node in ast.walk(ast.parse(source)):
        inside = isinstance(node, (ast.stmt, ast.ExceptHandler)) and node.lineno <= line <= (node.end_lineno or 0)
        if inside and (best is None or node.lineno >= best.lineno):  # type: ignore[attr-defined]
            best = node
    if best is None:
        return range(line, line + 1)
    body = getattr(best, "body", None)
    end = body[0].lineno - 1 if isinstance(body, list) and body else best.end_lineno  # type: ignore[attr-defined]
    return range(best.lineno, max(end, line) + 1)  # type: ignore[attr-defined]


def select(map_path: Path, module: str, test_files: list[str]) -> list[str]:
    """The pytest arguments for the mutant in the working tree: [] when no test runs its lines here."""
    covered: dict[str, list[str]] = json.loads(map_path.read_text())
    original = subprocess.run(["git", "show", f"HEAD:{module}"], capture_output=True, text=True, check=True).stdout
    contexts: set[str] = set()
    for line in _changed_lines(module):
        for n in _statement_lines(original, line):
            contexts.update(covered.get(str(n), []))
    if "" in contexts:
        return test_files
    files = sorted(c.removeprefix("file:") for c in contexts if c.startswith("file:"))
    nodes = sorted(c for c in contexts if not c.startswith("file:") and c.split("::")[0] not in files)
    return files + nodes


def main() -> int:
    map_path, module, *test_files = sys.argv[1:]
    selected = select(Path(map_path), module, test_files) or test_files
    pytest = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *selected]
    return subprocess.run(pytest, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
