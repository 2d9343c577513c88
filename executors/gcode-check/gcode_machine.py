"""An interpreter that follows a G-code file the way the printer would, checking each move.

The interpreter tracks what the printer would do (units, absolute or relative moves,
G92 offsets, homing) so that every move can be checked where it really goes, in machine
coordinates: inside the work volume, no longer than LONG_MOVE_THRESHOLD. A position is
unknown until homed (G28), set (G92) or reached by an absolute move; a move that starts
from an unknown position cannot be measured and is counted as such, never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gcode_arcs import ArcError, arc_geometry
from gcode_parse import GcodeSyntaxError, Statement, Word, parse_line
from gcode_printer import Printer
from gcode_report import FileReport, Problem, Segment

AXES = ("X", "Y", "Z")
INCH = 25.4
EPSILON = 1e-6  # mm of rounding slack at the work volume's faces
MODES = frozenset({"G17", "G20", "G21", "G90", "G91", "M82", "M83"})  # modal, take no values
# Commands the validator knows, with the parameter letters each accepts.
# fmt: off
PARAMETERS: dict[str, str] = {
    "G0": "XYZEF", "G1": "XYZEF", "G2": "XYZEFIJR", "G3": "XYZEFIJR", "G4": "PS",
    "G17": "", "G20": "", "G21": "", "G28": "XYZ", "G90": "", "G91": "", "G92": "XYZE",
    "M18": "XYZES", "M73": "PR", "M82": "", "M83": "", "M84": "XYZES", "M104": "ST",
    "M105": "", "M106": "PS", "M107": "P", "M109": "RST", "M117": "", "M118": "",
    "M140": "S", "M190": "RS", "M220": "S", "M221": "ST", "M400": "",
}
# fmt: on
FLAG_PARAMETERS = {"G28": "XYZ", "M18": "XYZE", "M84": "XYZE"}  # letters that need no number


class MoveError(ValueError):
    """A rule one command breaks; the interpreter records it against the line."""


Position = list[float | None]


@dataclass
class Machine:
    """The interpreter's state: where the tool is, and how the next numbers are meant."""

    printer: Printer
    report: FileReport
    position: Position = field(default_factory=lambda: [None, None, None])  # machine mm
    offset: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # machine - logical
    extruder: float = 0.0  # logical E
    units: float = 1.0  # mm per unit: 1 (G21) or 25.4 (G20)
    relative: bool = False  # G91
    relative_e: bool = False  # M83
    motion: str | None = None  # the last G0-G3, for lines that only give coordinates
    bad_move: bool = False
    line_problems: list[str] = field(default_factory=list)

    # -- one line ---------------------------------------------------------------------

    def execute(self, statement: Statement) -> None:
        """Apply one line: its mode words (G90, G21 ...) first, then its one command."""
        commands = [w for w in statement.words if w.letter in "GM"]
        if not commands:
            commands = [w for w in statement.words if w.letter == "T"][:1]
        parameters = [w for w in statement.words if w not in commands]
        main = [w for w in commands if w.code not in MODES]
        if len(main) > 1:
            raise MoveError(f"one command per line, found {' and '.join(w.code for w in main)}")
        if not main and parameters:  # coordinates alone continue the last motion (RS-274)
            if self.motion is None or not any(w.letter in "XYZE" for w in parameters):
                raise MoveError("parameters without a command (no G or M word on this line)")
            main = [Word(self.motion[0], self.motion[1:])]
        for word in commands:
            if word.code in MODES:
                self.command(word.code, [])
        for word in main:
            self.command(word.code, parameters)

    def command(self, code: str, parameters: list[Word]) -> None:
        """Check one command's parameters, then do what it does."""
        if code.startswith("T"):
            self.select_tool(code, parameters)
            return
        if code in self.printer.extra_commands:
            return
        if code not in PARAMETERS:
            hint = " (arcs are G2/G3 in the XY plane only)" if code in ("G18", "G19") else ""
            raise MoveError(f"unknown command {code}{hint}")
        values = self.check_parameters(code, parameters)
        handler = HANDLERS.get(code)
        if handler is not None:
            handler(self, code, values)

    def check_parameters(self, code: str, parameters: list[Word]) -> dict[str, float | None]:
        allowed, flags = PARAMETERS[code], FLAG_PARAMETERS.get(code, "")
        values: dict[str, float | None] = {}
        for word in parameters:
            if word.letter not in allowed:
                accepted = " ".join(allowed) or "none"
                raise MoveError(f"{code} does not take {word.letter} (accepted: {accepted})")
            if word.letter in values:
                raise MoveError(f"{word.letter} given twice")
            if word.number is None and word.letter not in flags:
                raise MoveError(f"{word.letter} needs a number")
            values[word.letter] = word.value
        return values

    # -- modes and settings ---------------------------------------------------------

    def set_mode(self, code: str, values: dict[str, float | None]) -> None:
        if code in ("G20", "G21"):
            self.units = INCH if code == "G20" else 1.0
        elif code in ("G90", "G91"):
            self.relative = code == "G91"
        elif code in ("M82", "M83"):
            self.relative_e = code == "M83"

    def select_tool(self, code: str, parameters: list[Word]) -> None:
        if parameters:
            raise MoveError(f"{code} takes no parameters")
        tool = code[1:]
        if not tool.isdigit():
            raise MoveError(f"tool {code} must be T followed by a whole number")
        if int(tool) >= self.printer.extruders:
            raise MoveError(f"tool {code} does not exist (EXTRUDERS = {self.printer.extruders})")

    def check_temperature(self, code: str, values: dict[str, float | None]) -> None:
        """M104/M109 (hotend), M140/M190 (bed): targets within the machine's maximum."""
        key = "MAX_BED_TEMP" if code in ("M140", "M190") else "MAX_HOTEND_TEMP"
        limit = self.printer.max_bed_temp if key == "MAX_BED_TEMP" else self.printer.max_hotend_temp
        for letter in "SR":
            value = values.get(letter)
            if value is not None and value < 0:
                raise MoveError(f"temperature {letter}{value:g} is negative")
            if value is not None and limit is not None and value > limit:
                raise MoveError(f"temperature {letter}{value:g} °C is above {key} {limit:g} °C")
        self.check_tool(code, values)

    def check_fan(self, code: str, values: dict[str, float | None]) -> None:
        speed = values.get("S")
        if speed is not None and not 0 <= speed <= 255:
            raise MoveError(f"fan speed S{speed:g} is outside 0..255")

    def check_tool(self, code: str, values: dict[str, float | None]) -> None:
        tool = values.get("T")
        if tool is not None and not (tool.is_integer() and 0 <= tool < self.printer.extruders):
            raise MoveError(f"tool T{tool:g} does not exist (EXTRUDERS = {self.printer.extruders})")

    def dwell(self, code: str, values: dict[str, float | None]) -> None:
        if any(v is not None and v < 0 for v in values.values()):
            raise MoveError("a dwell time cannot be negative")

    def home(self, code: str, values: dict[str, float | None]) -> None:
        """G28: the named axes (all if none) go to 0; homing clears their G92 offsets."""
        for index, axis in enumerate(AXES):
            if not values or axis in values:
                self.position[index] = 0.0
                self.offset[index] = 0.0

    def set_position(self, code: str, values: dict[str, float | None]) -> None:
        """G92: the current position gets new logical coordinates (all zero if none given)."""
        given = values or dict.fromkeys("XYZE", 0.0)
        for index, axis in enumerate(AXES):
            value = given.get(axis)
            if value is None:
                continue
            here = self.position[index]
            if here is None:  # unknown until now: take the machine to be where it says
                self.position[index], self.offset[index] = value * self.units, 0.0
            else:
                self.offset[index] = here - value * self.units
        if given.get("E") is not None:
            self.extruder = (given["E"] or 0.0) * self.units

    # -- moves --------------------------------------------------------------------------

    def target(self, values: dict[str, float | None]) -> Position:
        """Where a move goes, in machine coordinates (None where unknown)."""
        goal: Position = list(self.position)
        for index, axis in enumerate(AXES):
            value = values.get(axis)
            if value is None:
                continue
            here = self.position[index]
            if self.relative:
                goal[index] = None if here is None else here + value * self.units
            else:
                goal[index] = value * self.units + self.offset[index]
        return goal

    def extrusion(self, values: dict[str, float | None]) -> float:
        """How much filament the move pushes (negative: a retraction); updates E."""
        value = values.get("E")
        if value is None:
            return 0.0
        amount = value * self.units
        delta = amount if (self.relative or self.relative_e) else amount - self.extruder
        self.extruder = self.extruder + amount if (self.relative or self.relative_e) else amount
        return delta

    def check_feedrate(self, values: dict[str, float | None]) -> None:
        feed = values.get("F")
        if feed is None:
            return
        feed *= self.units
        if feed <= 0:
            raise MoveError("feedrate F must be positive")
        limit = self.printer.max_feedrate
        if limit is not None and feed > limit + EPSILON:
            raise MoveError(f"feedrate F{feed:g} mm/min is above MAX_FEEDRATE {limit:g}")

    def check_inside(self, point: Position) -> None:
        outside = [
            f"{axis}={value:.2f} (allowed 0..{self.printer.size(axis):g})"
            for axis, value in zip(AXES, point, strict=True)
            if value is not None and not -EPSILON <= value <= self.printer.size(axis) + EPSILON
        ]
        if outside:
            self.flag("outside the work volume: " + ", ".join(outside))

    def check_length(self, length: float) -> None:
        limit = self.printer.long_move_threshold
        if length > limit + EPSILON:
            self.flag(
                f"single move of {length:.1f} mm is longer than LONG_MOVE_THRESHOLD {limit:g} mm"
            )

    def flag(self, message: str) -> None:
        """A broken rule of a move that still happens (the machine would try it)."""
        self.bad_move = True
        self.line_problems.append(message)

    def move(self, code: str, values: dict[str, float | None]) -> None:
        """G0/G1: a straight move; checked, measured, drawn."""
        self.motion = code
        self.check_feedrate(values)
        if not any(a in values for a in "XYZE"):
            return  # only a feedrate
        start, goal = self.position, self.target(values)
        delta_e = self.extrusion(values)
        self.position = goal
        self.check_inside(goal)
        a, b = known(start), known(goal)
        length = math.dist(a, b) if a is not None and b is not None else None
        self.record(length, delta_e, [start, goal])

    def arc(self, code: str, values: dict[str, float | None]) -> None:
        """G2 (clockwise) / G3 (counter-clockwise) in the XY plane, by centre offset or radius."""
        self.motion = code
        self.check_feedrate(values)
        start, goal = self.position, self.target(values)
        delta_e = self.extrusion(values)
        self.position = goal  # even a broken arc leaves the tool somewhere
        a, b = known(start), known(goal)
        if a is None or b is None:
            raise MoveError(
                "an arc needs a known start and end: home (G28) or move absolutely first"
            )
        geometry = arc_geometry(code == "G2", a, b, values, self.units)
        for x, y in geometry.extremes:
            self.check_inside([x, y, None])
            self.report.include([x, y, None])
        self.check_inside(goal)
        self.report.arcs += 1
        self.record(geometry.length, delta_e, geometry.path)

    def record(
        self, length: float | None, delta_e: float, path: Sequence[Sequence[float | None]]
    ) -> None:
        """Count one checked move into the report and draw it (if its XY is known)."""
        report = self.report
        report.moves += 1
        report.filament_mm += max(delta_e, 0.0)
        extruding = delta_e > 0 and length != 0
        if length is None:
            report.unmeasured_moves += 1
        else:
            self.check_length(length)
            if extruding:
                report.extrude_mm += length
            else:
                report.travel_mm += length
        z = path[-1][2]
        if extruding and z is not None:
            report.layers.add(round(z, 3))
        for point in path:
            report.include(point, printed=extruding)
        points = tuple((x, y) for x, y, _ in path if x is not None and y is not None)
        if len(points) > 1:
            report.segments.append(Segment(points, extruding, self.bad_move))


def known(point: Position) -> list[float] | None:
    """The point's coordinates if all are known."""
    values = [v for v in point if v is not None]
    return values if len(values) == len(point) else None


HANDLERS: dict[str, Callable[[Machine, str, dict[str, float | None]], None]] = {
    **dict.fromkeys(MODES, Machine.set_mode),
    "G0": Machine.move,
    "G1": Machine.move,
    "G2": Machine.arc,
    "G3": Machine.arc,
    "G4": Machine.dwell,
    "G28": Machine.home,
    "G92": Machine.set_position,
    **dict.fromkeys(("M104", "M109", "M140", "M190"), Machine.check_temperature),
    "M106": Machine.check_fan,
    "M221": Machine.check_tool,
}


def check_line_number(statement: Statement, last: int | None) -> str | None:
    """Line numbers, where given, must increase."""
    if statement.number is None or last is None or statement.number > last:
        return None
    return f"line number N{statement.number} does not follow N{last}"


def validate_lines(name: str, lines: list[str], printer: Printer) -> FileReport:
    """Follow a whole file line by line; every broken rule becomes a Problem."""
    report = FileReport(name, lines=len(lines))
    machine = Machine(printer, report)
    last_number: int | None = None
    for index, raw in enumerate(lines, start=1):
        machine.bad_move, machine.line_problems = False, []
        try:
            statement = parse_line(raw)
            numbering = check_line_number(statement, last_number)
            if numbering:
                machine.line_problems.append(numbering)
            last_number = statement.number if statement.number is not None else last_number
            machine.execute(statement)
        except (GcodeSyntaxError, MoveError, ArcError) as exc:
            machine.line_problems.append(str(exc))
        source = raw.strip()
        report.problems.extend(Problem(index, source, message) for message in machine.line_problems)
    return report


def validate_file(path: Path, name: str, printer: Printer) -> FileReport:
    """Read a file (any encoding: bytes that are not UTF-8 are shown as '?') and validate it."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    return validate_lines(name, text.splitlines(), printer)
