"""Running the real `ulos-py` processes in end-to-end tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


StartCli = Callable[..., subprocess.Popen[str]]


def settings_env(values: dict[str, Any]) -> dict[str, str]:
    """A process environment from a settings dict, on top of a clean copy of ours."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MESSAGE_BROKER", "ULOS_"))}
    return {**keep, **{k: str(v) for k, v in values.items()}}
