"""The garbage collector of a process that stores notices, set for what it makes.

Each batch makes thousands of short-lived objects (parsed bodies, rows, journeys) and no
reference cycles worth hunting at that pace; start-up's objects (modules, compiled
statements) live as long as the process. Measured on `Store.add` (benchmarks/tracker_store.py,
PostgreSQL): the event loop's CPU a notice 31.4 → 29.1 µs in the queue's order, 97.9 → 88.4 µs
with tasks spread over batches.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000
"""Allocations between two young collections (Python's default: 700)."""


def settle_collector() -> None:
    """Leave start-up's objects out of every later collection and collect the young less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 10, 10)
