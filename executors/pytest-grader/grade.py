"""pytest-grader: run the instructor's tests against a student's submission.

pytest runs in a child process, and the verdict comes from the JUnit report it writes to
a private folder, not from anything the submission could print or return: code that
exits the interpreter, hangs past the per-test deadline, or is killed for memory ends as
a FAIL with a reason, never as a PASS. Writes `results/junit.xml` and
`results/summary.txt`, prints the summary, and exits 0 iff every test passed.

Settings (environment):
  ASSIGNMENT_DIR  folder of the instructor's tests (default: `assignment/` next to this file)
  TEST_TIMEOUT    seconds each test may take, 0 for no limit (default 10; see grader_plugin)
  TASK_DIR        the submission (default: the working directory, i.e. the mount point)
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = "results"
REASON_WIDTH = 160
PHASE_WRAPPER = re.compile(r'^failed on (?P<phase>setup|teardown) with "(?:Failed: )?(?P<why>.*)"$')
PYTEST_EXIT = {
    1: "some tests failed",
    2: "interrupted, usually by errors while collecting the tests",
    3: "internal error of pytest",
    4: "usage error (a bad option or setting)",
    5: "no tests were collected",
}


@dataclass(frozen=True)
class Failure:
    """One test that did not pass, and the first line of why."""

    test: str
    kind: str  # failed, error or skipped
    reason: str


@dataclass
class Outcome:
    """What pytest reported: counts from its JUnit file, plus how the process ended."""

    returncode: int
    tests: int = 0
    failures: list[Failure] = field(default_factory=list)
    report_found: bool = False

    def count(self, kind: str) -> int:
        return sum(1 for f in self.failures if f.kind == kind)

    @property
    def passed(self) -> int:
        return self.tests - len(self.failures)

    @property
    def all_passed(self) -> bool:
        return self.returncode == 0 and self.report_found and self.tests > 0 and not self.failures


def pytest_command(assignment: Path, junit: Path) -> list[str]:
    """pytest on the assignment only: never the submission's tests, config or conftest."""
    return [
        sys.executable,
        "-B",  # no .pyc files, in /task or anywhere
        "-P",  # no working directory on sys.path, so the submission cannot shadow pytest
        "-m",
        "pytest",
        str(assignment),
        f"--rootdir={assignment}",
        "-p",
        "no:cacheprovider",
        "-p",
        "grader_plugin",
        f"--junitxml={junit}",
        "-q",
        "-rfEs",
        "--tb=short",
        "--color=no",
    ]


def pytest_environment(environ: Mapping[str, str], submission: Path) -> dict[str, str]:
    """Our environment plus what the plugin needs; no pytest options from outside."""
    env = {k: v for k, v in environ.items() if k not in ("PYTEST_ADDOPTS", "PYTHONPATH")}
    env.update(
        PYTHONPATH=str(HERE),
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        GRADER_SUBMISSION_DIR=str(submission),
    )
    return env


def short(text: str | None) -> str:
    """The first non-empty line of a message, without pytest's wrapping, cut to a width."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    first = lines[0] if lines else "(no message)"
    wrapped = PHASE_WRAPPER.match(first)
    if wrapped:  # 'failed on setup with "Failed: why"' -> 'setup: why'
        first = f"{wrapped['phase']}: {wrapped['why']}"
    first = first.removeprefix("Failed: ")
    return first if len(first) <= REASON_WIDTH else first[: REASON_WIDTH - 3] + "..."


def read_failures(case: ET.Element) -> list[Failure]:
    """The not-passed outcomes of one <testcase> (a test may fail and error in teardown)."""
    name = f"{case.get('classname', '')}::{case.get('name', '?')}".lstrip(":")
    kinds = {"failure": "failed", "error": "error", "skipped": "skipped"}
    return [
        Failure(name, kinds[child.tag], short(child.get("message") or child.text))
        for child in case
        if child.tag in kinds
    ]


def read_junit(junit: Path, outcome: Outcome) -> None:
    """Fill `outcome` from pytest's JUnit report; a missing or broken report changes nothing."""
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return
    cases = root.findall(".//testcase")
    outcome.report_found = True
    outcome.tests = len(cases)
    for case in cases:
        failures = read_failures(case)
        outcome.failures.extend(failures[:1])  # one line per test, the first problem


def process_end(returncode: int) -> str:
    """How the pytest process ended, in words."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (most likely the memory limit)" if -returncode == signal.SIGKILL else ""
        return f"pytest was killed by {name}{hint}"
    meaning = PYTEST_EXIT.get(returncode, "the submission ended the interpreter")
    return f"pytest exit code {returncode}: {meaning}"


def render_summary(outcome: Outcome) -> str:
    """The human-readable summary: verdict, counts, and why each failing test failed."""
    verdict = "PASS" if outcome.all_passed else "FAIL"
    lines = [f"pytest-grader: {verdict} - {outcome.passed} of {outcome.tests} tests passed"]
    lines.append(
        f"tests: {outcome.tests}, passed: {outcome.passed}, failed: {outcome.count('failed')}, "
        f"errors: {outcome.count('error')}, skipped: {outcome.count('skipped')}"
    )
    if outcome.returncode != 0:
        lines.append(process_end(outcome.returncode))
    if not outcome.report_found:
        cause = (
            ""
            if outcome.returncode < 0
            else ": the submission may have ended the interpreter (os._exit, sys.exit at "
            "import) or the tests could not start"
        )
        lines.append(f"pytest wrote no JUnit report, so no test counts as passed{cause}.")
    reasons = {f.reason for f in outcome.failures}
    if len(outcome.failures) > 1 and len(reasons) == 1:
        lines.append(f"Every test not passed has the same reason: {reasons.pop()}")
    if outcome.failures:
        lines += ["", "Tests not passed:"]
        lines += [f"  - {f.test} [{f.kind}]: {f.reason}" for f in outcome.failures]
    return "\n".join(lines) + "\n"


def run_pytest(assignment: Path, submission: Path, results: Path) -> Outcome:
    """Run the tests in a child process; its JUnit report goes to a private folder first."""
    with tempfile.TemporaryDirectory(prefix="grader-") as private:
        junit = Path(private) / "junit.xml"
        sys.stdout.flush()
        completed = subprocess.run(
            pytest_command(assignment, junit),
            cwd=submission,
            env=pytest_environment(os.environ, submission),
            check=False,
        )
        outcome = Outcome(completed.returncode)
        read_junit(junit, outcome)
        if junit.is_file():
            shutil.copyfile(junit, results / "junit.xml")
    return outcome


def main() -> int:
    submission = Path(os.environ.get("TASK_DIR") or Path.cwd())
    assignment = Path(os.environ.get("ASSIGNMENT_DIR") or HERE / "assignment").resolve()
    results = submission / RESULTS
    results.mkdir(exist_ok=True)
    for stale in ("junit.xml", "summary.txt"):
        (results / stale).unlink(missing_ok=True)
    outcome = run_pytest(assignment, submission, results)
    summary = render_summary(outcome)
    (results / "summary.txt").write_text(summary, encoding="utf-8")
    sys.stdout.write("\n" + summary)
    return 0 if outcome.all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
