"""web-e2e: run the instructor's browser tests against the submission's static web app.

The submission (HTML, CSS, JavaScript; `index.html` at its root, or in APP_DIR) is served
on 127.0.0.1 inside the container, and pytest drives Debian's Chromium through Selenium
and chromium-driver. This is the role Cypress plays in the system ulos-py replaces.
Writes `results/junit.xml`, `results/summary.txt` and `results/screenshots/<test>.png`
(one per test), prints the summary, and exits 0 iff every test passed.

Settings (environment):
  TESTS_DIR  folder of the instructor's browser tests (default: `tests/` next to this file)
  APP_DIR    the web app's folder inside the submission (default: the submission root)
  TASK_DIR   the submission (default: the working directory, i.e. the mount point)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = "results"
REASON_WIDTH = 160
PHASE_WRAPPER = re.compile(
    r'^failed on (?P<phase>setup|teardown) with "(?:Failed: )?(?P<why>.*?)"?$'
)
OUTSIDE_REQUEST = "outside_request"  # browser_plugin's JUnit property
# chromedriver's words when the page's renderer process died, and what they mean here
TAB_CRASHED = "tab crashed"
CRASH_MEANING = (
    "the page's browser tab crashed: it used more memory, processes or threads than the "
    "sandbox allows"
)


@dataclass
class Outcome:
    """What pytest reported in its JUnit file, plus how the process ended."""

    returncode: int
    tests: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # test, kind, why
    outside_requests: list[str] = field(default_factory=list)  # "url (net::ERR_...)"
    report_found: bool = False

    @property
    def all_passed(self) -> bool:
        return self.returncode == 0 and self.report_found and self.tests > 0 and not self.failures


def short(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    first = lines[0] if lines else "(no message)"
    if wrapped := PHASE_WRAPPER.match(first):  # 'failed on setup with "why"' -> 'why'
        first = wrapped["why"]
    first = first.removeprefix("Failed: ")
    if TAB_CRASHED in first:
        first = f"{CRASH_MEANING} (chromedriver: {TAB_CRASHED})"
    return first if len(first) <= REASON_WIDTH else first[: REASON_WIDTH - 3] + "..."


def read_junit(junit: Path, outcome: Outcome) -> None:
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return
    outcome.report_found = True
    cases = root.findall(".//testcase")
    outcome.tests = len(cases)
    kinds = {"failure": "failed", "error": "error", "skipped": "skipped"}
    for case in cases:
        name = f"{case.get('classname', '')}::{case.get('name', '?')}".lstrip(":")
        problems = [c for c in case if c.tag in kinds]
        if problems:
            first = problems[0]
            outcome.failures.append(
                (name, kinds[first.tag], short(first.get("message") or first.text))
            )
    for prop in root.iter("property"):
        request = prop.get("value", "")
        if prop.get("name") == OUTSIDE_REQUEST and request not in outcome.outside_requests:
            outcome.outside_requests.append(request)


def render_summary(outcome: Outcome) -> str:
    passed = outcome.tests - len(outcome.failures)
    verdict = "PASS" if outcome.all_passed else "FAIL"
    lines = [f"web-e2e: {verdict} - {passed} of {outcome.tests} browser tests passed"]
    if outcome.returncode < 0:
        name = signal.Signals(-outcome.returncode).name
        lines.append(f"pytest was killed by {name} (most likely the memory limit)")
    if not outcome.report_found:
        lines.append("pytest wrote no JUnit report, so no test counts as passed.")
    reasons = {why for _, _, why in outcome.failures}
    if len(outcome.failures) > 1 and len(reasons) == 1:
        lines.append(f"Every test not passed has the same reason: {reasons.pop()}")
    if outcome.failures:
        lines += ["", "Tests not passed:"]
        lines += [f"  - {test} [{kind}]: {why}" for test, kind, why in outcome.failures]
    if outcome.outside_requests:
        lines += ["", "The page asked for these outside the container; the sandbox has no network:"]
        lines += [f"  - {request}" for request in outcome.outside_requests]
    return "\n".join(lines) + "\n"


def run_pytest(tests: Path, app: Path, results: Path) -> Outcome:
    junit = results / "junit.xml"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTHONPATH")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(":"),
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        WEB_E2E_APP_DIR=str(app),
        WEB_E2E_RESULTS_DIR=str(results),
    )
    command = [
        sys.executable,
        "-B",
        "-P",
        "-m",
        "pytest",
        str(tests),
        f"--rootdir={tests}",
        "-p",
        "no:cacheprovider",
        "-p",
        "browser_plugin",
        f"--junitxml={junit}",
        "-q",
        "-rfE",
        "--tb=short",
        "--color=no",
    ]
    sys.stdout.flush()
    completed = subprocess.run(command, cwd=tests, env=env, check=False)
    outcome = Outcome(completed.returncode)
    read_junit(junit, outcome)
    return outcome


def main() -> int:
    submission = Path(os.environ.get("TASK_DIR") or Path.cwd()).resolve()
    tests = Path(os.environ.get("TESTS_DIR") or HERE / "tests").resolve()
    app = (submission / os.environ.get("APP_DIR", ".")).resolve()
    if not app.is_relative_to(submission):
        print(f"web-e2e cannot run: APP_DIR={os.environ['APP_DIR']!r} leaves the submission")
        return 2
    results = submission / RESULTS
    results.mkdir(exist_ok=True)
    for stale in ("junit.xml", "summary.txt"):
        (results / stale).unlink(missing_ok=True)
    outcome = run_pytest(tests, app, results)
    summary = render_summary(outcome)
    (results / "summary.txt").write_text(summary, encoding="utf-8")
    sys.stdout.write("\n" + summary)
    return 0 if outcome.all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
