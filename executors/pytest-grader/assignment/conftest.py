"""Fixtures of the text-utilities assignment.

The submission is imported inside each test (through the grader plugin's
`import_submission`), so a missing or broken solution.py fails every test with a clear
reason instead of stopping collection, and one broken function never hides the others.
"""

from collections.abc import Callable
from types import ModuleType

import pytest


@pytest.fixture
def solution(import_submission: Callable[[str], ModuleType]) -> ModuleType:
    return import_submission("solution")
