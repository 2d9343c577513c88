"""The machine description: printer.properties, as the system ulos-py replaces wrote it.

An INI file with one section, [PRINTER]: MAX_X, MAX_Y, MAX_Z (the work volume in mm, from
0) and LONG_MOVE_THRESHOLD (the longest allowed single move in mm) are required; the other
keys are optional limits that are checked only when given.
"""

from __future__ import annotations

import configparser
import math
from dataclasses import dataclass
from pathlib import Path


class ConfigError(ValueError):
    """The machine description cannot be used; the validator cannot run."""


@dataclass(frozen=True)
class Printer:
    """The machine, from printer.properties: section [PRINTER], sizes in mm."""

    source: str
    max_x: float
    max_y: float
    max_z: float
    long_move_threshold: float
    name: str = "printer"
    max_feedrate: float | None = None  # mm/min
    max_hotend_temp: float | None = None  # °C
    max_bed_temp: float | None = None  # °C
    extruders: int = 1
    extra_commands: frozenset[str] = frozenset()

    def size(self, axis: str) -> float:
        return {"X": self.max_x, "Y": self.max_y, "Z": self.max_z}[axis]

    def describe(self) -> str:
        lines = [
            f"{self.name}, from {self.source}",
            f"  work volume X 0..{self.max_x:g}, Y 0..{self.max_y:g}, Z 0..{self.max_z:g} mm; "
            f"longest single move {self.long_move_threshold:g} mm",
        ]
        optional = [
            ("max feedrate", self.max_feedrate, "mm/min"),
            ("max hotend", self.max_hotend_temp, "°C"),
            ("max bed", self.max_bed_temp, "°C"),
        ]
        extras = [
            f"{label} {value:g} {unit}" for label, value, unit in optional if value is not None
        ]
        extras.append(f"extruders {self.extruders}")
        if self.extra_commands:
            extras.append("also accepted: " + " ".join(sorted(self.extra_commands)))
        return "\n".join([*lines, "  " + "; ".join(extras)])


def optional_number(section: configparser.SectionProxy, key: str) -> float | None:
    """A positive number under `key`, or None when the key is absent or empty."""
    text = section.get(key, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{key} = {text!r} is not a number") from None
    if not 0 < value < math.inf:
        raise ConfigError(f"{key} = {text!r} must be a positive number")
    return value


def required_number(section: configparser.SectionProxy, key: str) -> float:
    value = optional_number(section, key)
    if value is None:
        raise ConfigError(f"key {key} is missing from section [PRINTER]")
    return value


def load_printer(path: Path) -> Printer:
    """Read printer.properties: MAX_X, MAX_Y, MAX_Z, LONG_MOVE_THRESHOLD, and optional keys."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(path.read_text(encoding="utf-8"), source=str(path))
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not parser.has_section("PRINTER"):
        raise ConfigError(f"{path} has no [PRINTER] section")
    section = parser["PRINTER"]
    extruders = optional_number(section, "EXTRUDERS") or 1.0
    if not extruders.is_integer():
        raise ConfigError(f"EXTRUDERS = {extruders:g} must be a whole number")
    return Printer(
        source=str(path),
        max_x=required_number(section, "MAX_X"),
        max_y=required_number(section, "MAX_Y"),
        max_z=required_number(section, "MAX_Z"),
        long_move_threshold=required_number(section, "LONG_MOVE_THRESHOLD"),
        name=section.get("NAME", "").strip() or "printer",
        max_feedrate=optional_number(section, "MAX_FEEDRATE"),
        max_hotend_temp=optional_number(section, "MAX_HOTEND_TEMP"),
        max_bed_temp=optional_number(section, "MAX_BED_TEMP"),
        extruders=int(extruders),
        extra_commands=frozenset(section.get("EXTRA_COMMANDS", "").upper().split()),
    )
