"""A child process that must not outlive its parent: a node's workers, the tracker's writer."""

from __future__ import annotations

import ctypes
import ctypes.util
import signal

PR_SET_PDEATHSIG = 1


def term_when_orphaned() -> None:
    """Ask Linux for a SIGTERM when the parent dies (even by SIGKILL, which it cannot pass
    on), so an orphan stops by itself. Check the parent after asking: it may be gone."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
