"""What the validator found in one file: statistics, the drawn tool path, and problems.

Kept apart from the interpreter so that the summary and the picture depend on the
findings only, not on how they were found.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Segment:
    """A drawn piece of the tool path in machine XY, and whether it extruded or broke a rule."""

    points: tuple[tuple[float, float], ...]
    extrude: bool
    bad: bool


@dataclass(frozen=True)
class Problem:
    """A rule a line breaks, located for the student."""

    line: int
    source: str
    message: str


@dataclass
class FileReport:
    """What one file does and what is wrong with it."""

    name: str
    lines: int = 0
    moves: int = 0
    arcs: int = 0
    unmeasured_moves: int = 0
    travel_mm: float = 0.0
    extrude_mm: float = 0.0
    filament_mm: float = 0.0
    low: list[float] = field(default_factory=lambda: [math.inf] * 3)  # whole tool path
    high: list[float] = field(default_factory=lambda: [-math.inf] * 3)
    printed_low: list[float] = field(default_factory=lambda: [math.inf] * 3)  # extrusion only
    printed_high: list[float] = field(default_factory=lambda: [-math.inf] * 3)
    layers: set[float] = field(default_factory=set)
    segments: list[Segment] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems

    def include(self, point: Iterable[float | None], printed: bool = False) -> None:
        """Widen the bounding box (and the printed one) by a point's known coordinates."""
        boxes = [(self.low, self.high)] + (
            [(self.printed_low, self.printed_high)] if printed else []
        )
        for index, value in enumerate(point):
            for low, high in boxes:
                if value is not None:
                    low[index] = min(low[index], value)
                    high[index] = max(high[index], value)
