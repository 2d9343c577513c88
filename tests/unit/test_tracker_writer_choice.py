"""Where the tracker stores: a writing process of its own for a SQLite file (its work would
share the loop's process), the loop itself for PostgreSQL (whose work runs in the server),
unless ULOS_TRACKER_WRITER says."""

from __future__ import annotations

import pytest

from ulos_py.tracker.settings import TrackerSettings

SQLITE = "sqlite:///tracker.sqlite3"
POSTGRES = "postgresql://u:p@127.0.0.1/tracker"


@pytest.mark.parametrize(
    ("writer", "database", "apart"),
    [
        (None, SQLITE, True),
        (None, POSTGRES, False),
        ("auto", SQLITE, True),
        ("process", POSTGRES, True),
        ("loop", SQLITE, False),
    ],
)
def test_the_writer_is_chosen_by_the_database_unless_named(
    monkeypatch: pytest.MonkeyPatch, writer: str | None, database: str, apart: bool
) -> None:
    monkeypatch.setenv("ULOS_TRACKER_QUEUE", "tracker")
    monkeypatch.setenv("ULOS_TRACKER_DATABASE", database)
    if writer is not None:
        monkeypatch.setenv("ULOS_TRACKER_WRITER", writer)
    assert TrackerSettings().writes_apart is apart  # type: ignore[call-arg]


def test_an_unknown_writer_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ULOS_TRACKER_QUEUE", "tracker")
    monkeypatch.setenv("ULOS_TRACKER_WRITER", "threads")
    with pytest.raises(ValueError, match="ULOS_TRACKER_WRITER"):
        TrackerSettings()  # type: ignore[call-arg]
