"""pytest plugin loaded by grade.py: the submission on sys.path, safe imports, per-test deadline.

It lives apart from the instructor's tests so that an assignment folder holds nothing but
tests: any folder of pytest tests that asks for `import_submission` becomes gradable.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, ModuleType

import pytest

SUBMISSION_ENV = "GRADER_SUBMISSION_DIR"
TIMEOUT_ENV = "TEST_TIMEOUT"
DEFAULT_TIMEOUT = 10.0
_TIMEOUT = pytest.StashKey[float]()


def submission_dir() -> Path:
    return Path(os.environ.get(SUBMISSION_ENV) or Path.cwd())


def configured_timeout() -> float:
    """Seconds each test (setup and call apart) may take; 0 switches the deadline off."""
    text = os.environ.get(TIMEOUT_ENV, "").strip() or str(DEFAULT_TIMEOUT)
    try:
        seconds = float(text)
    except ValueError:
        raise pytest.UsageError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds") from None
    if seconds < 0:
        raise pytest.UsageError(f"{TIMEOUT_ENV}={text!r} is negative")
    return seconds


def pytest_configure(config: pytest.Config) -> None:
    # First on the path, as when the student ran their code in their own folder.
    sys.path.insert(0, str(submission_dir()))
    config.stash[_TIMEOUT] = configured_timeout()


@contextmanager
def deadline(seconds: float, phase: str) -> Iterator[None]:
    """Fail the running test phase once `seconds` have passed (an endless loop, a hang)."""
    if seconds <= 0:
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        pytest.fail(f"{phase} took longer than {seconds:g} s ({TIMEOUT_ENV})", pytrace=False)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    with deadline(item.config.stash[_TIMEOUT], "setup (importing the submission)"):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    with deadline(item.config.stash[_TIMEOUT], "the test"):
        yield


def python_files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.py"))


def import_failure(name: str, exc: BaseException) -> str:
    """Why importing module `name` of the submission failed, for a student to read."""
    if isinstance(exc, ModuleNotFoundError) and exc.name == name:
        found = ", ".join(python_files_in(submission_dir())) or "none"
        return f"{name}.py not found in the submission (Python files there: {found})"
    if isinstance(exc, ModuleNotFoundError):
        return f"{name}.py imports a module that is not available: {exc}"
    if isinstance(exc, SyntaxError):
        where = f"{Path(exc.filename or name).name} line {exc.lineno}"
        return f"{name}.py does not compile: {exc.msg} ({where})"
    return f"importing {name}.py failed: {type(exc).__name__}: {exc}"


def import_module_from_submission(name: str) -> ModuleType:
    """Import module `name` of the submission; any failure fails the test with a clear reason."""
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit) as exc:
        reason = import_failure(name, exc)
    # Outside the except block, so the report shows the reason, not a chained traceback.
    pytest.fail(reason, pytrace=False)


@pytest.fixture
def import_submission() -> Callable[[str], ModuleType]:
    """`import_submission("solution")` in a fixture or test: the student's module."""
    return import_module_from_submission
