"""G2/G3 arcs in the XY plane: centre, length, drawn points and extremes.

Arcs are followed exactly rather than rejected, because arc-fitting slicer plugins and
CNC files use them: a bounds check on the end points alone would miss an arc that bulges
out of the work volume, so the circle's extremes inside the arc are checked too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EPSILON = 1e-6  # mm
ARC_TOLERANCE = 0.05  # mm an arc's end may lie off its circle
ARC_STEP = math.radians(5)  # angle between drawn points of an arc


class ArcError(ValueError):
    """An arc that cannot be followed; the message says why."""


@dataclass(frozen=True)
class ArcGeometry:
    length: float
    path: list[list[float]]  # points along the arc, for drawing and the bounding box
    extremes: list[tuple[float, float]]  # where the circle is widest inside the arc


def arc_centre(
    clockwise: bool,
    start: list[float],
    goal: list[float],
    values: dict[str, float | None],
    units: float,
) -> tuple[float, float]:
    """The centre of an arc from I/J (offsets from the start) or R (negative: the long way)."""
    has_offset, radius = "I" in values or "J" in values, values.get("R")
    if has_offset == (radius is not None):
        raise ArcError("an arc needs either I/J (centre offset) or R (radius), not both or neither")
    if radius is None:
        return start[0] + (values.get("I") or 0.0) * units, start[1] + (
            values.get("J") or 0.0
        ) * units
    dx, dy, r = goal[0] - start[0], goal[1] - start[1], radius * units
    chord = math.hypot(dx, dy)
    if chord < EPSILON:
        raise ArcError("an R arc cannot be a full circle; use I/J")
    if 4 * r * r < chord * chord - EPSILON:
        raise ArcError(
            f"arc radius R{abs(radius):g} is shorter than half the chord ({chord / 2:.2f} mm)"
        )
    h = -math.sqrt(max(4 * r * r - chord * chord, 0.0)) / chord
    h = -h if not clockwise else h
    h = -h if r < 0 else h
    return start[0] + 0.5 * (dx - dy * h), start[1] + 0.5 * (dy + dx * h)


def arc_geometry(
    clockwise: bool,
    start: list[float],
    goal: list[float],
    values: dict[str, float | None],
    units: float,
) -> ArcGeometry:
    """Length, drawn points and XY extremes of an arc (a helix if Z changes)."""
    cx, cy = arc_centre(clockwise, start, goal, values, units)
    radius = math.hypot(start[0] - cx, start[1] - cy)
    off_circle = abs(math.hypot(goal[0] - cx, goal[1] - cy) - radius)
    if off_circle > ARC_TOLERANCE:
        raise ArcError(f"the arc's end point is {off_circle:.2f} mm off its circle")
    begin, end = math.atan2(start[1] - cy, start[0] - cx), math.atan2(goal[1] - cy, goal[0] - cx)
    sweep = ((begin - end) if clockwise else (end - begin)) % math.tau
    if sweep < 1e-9:
        sweep = math.tau  # start == end with I/J: a full circle
    direction = -1.0 if clockwise else 1.0
    steps = max(2, math.ceil(sweep / ARC_STEP))
    path: list[list[float]] = [
        [
            cx + radius * math.cos(begin + direction * sweep * k / steps),
            cy + radius * math.sin(begin + direction * sweep * k / steps),
            start[2] + (goal[2] - start[2]) * k / steps,
        ]
        for k in range(steps)
    ]
    path.append(list(goal))
    extremes = [
        (cx + radius * math.cos(angle), cy + radius * math.sin(angle))
        for angle in (0.0, math.pi / 2, math.pi, -math.pi / 2)
        if ((angle - begin) * direction) % math.tau <= sweep
    ]
    return ArcGeometry(math.hypot(radius * sweep, goal[2] - start[2]), path, extremes)
