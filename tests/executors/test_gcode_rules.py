"""The G-code validator's rules, one small program each, run on this machine's Python.

The validator uses the standard library only, so its script runs here as it does in the
image (where test_images.py runs the examples); these cases are too many and too small
to pay a container start each.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support.executors import EXECUTORS

VALIDATOR = EXECUTORS / "gcode-check" / "validate.py"
PRINTER = """\
[PRINTER]
NAME = test bench
MAX_X = 200
MAX_Y = 200
MAX_Z = 100
LONG_MOVE_THRESHOLD = 150
MAX_FEEDRATE = 6000
MAX_HOTEND_TEMP = 260
MAX_BED_TEMP = 100
EXTRA_COMMANDS = M201
"""


def checksummed(line: str) -> str:
    checksum = 0
    for byte in line.encode():
        checksum ^= byte
    return f"{line}*{checksum}"


def validate(tmp_path: Path, gcode: str, name: str = "part.gcode") -> tuple[bool, str]:
    """Run the validator on one file; (marker written, summary)."""
    task = tmp_path / "task"
    task.mkdir(exist_ok=True)
    (task / name).write_text(gcode)
    (tmp_path / "printer.properties").write_text(PRINTER)
    done = subprocess.run(
        [sys.executable, "-B", str(VALIDATOR)],
        env={"TASK_DIR": str(task), "PRINTER_PROPERTIES": str(tmp_path / "printer.properties")},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return (task / "results" / "PASSED").exists(), (task / "results" / "summary.txt").read_text()


VALID = {
    "relative moves": "G28\nG91\nG1 X10 Y10 F3000\nG1 X10\nG90\nG1 X100 Y100\n",
    "inches": "G28\nG20\nG1 X3 Y3 F100\nG1 X7.8\n",
    "G92 shifts the origin": "G28\nG1 X100 Y100\nG92 X0 Y0\nG1 X50 Y50\n",
    "G92 E0 and M83": "G28\nM83\nG1 X10 Y10 E1\nG92 E0\nG1 X20 E0.5\n",
    "arc by centre": "G28\nG1 X100 Y100\nG2 X120 Y100 I10 J0 E1\nG3 X100 Y100 I-10 J0\n",
    "arc by radius": "G28\nG1 X100 Y100\nG3 X120 Y100 R10\n",
    "full circle": "G28\nG1 X100 Y100\nG2 X100 Y100 I20\n",
    "checksums and line numbers": "\n".join(
        checksummed(line) for line in ("N1 G28", "N2 G1 X10 Y10 F3000", "N3 M117 hi")
    ),
    "comments of both kinds": "G28 (home)\nG1 X10 (to x) Y10 ; and y\n; only a comment\n",
    "words without spaces, modal motion": "G21 G90\nG28\nG1X10Y10F3000\nX20 Y20\n",
    "tool, temperatures, fan, dwell": "T0\nM104 S210 T0\nM190 S60\nM106 S128\nG4 P500\nM107\n",
    "an extra command from the properties": "G28\nM201 X500 Y500\n",
    "CRLF line ends": "G28\r\nG1 X10 Y10\r\n",
}


@pytest.mark.parametrize("gcode", VALID.values(), ids=VALID.keys())
def test_valid_programs_pass(tmp_path: Path, gcode: str) -> None:
    passed, summary = validate(tmp_path, gcode)

    assert passed, summary
    assert "errors: none" in summary


INVALID = {
    "relative move out": ("G28\nG1 X190 Y10\nG91\nG1 X20\n", 4, "outside the work volume: X=210"),
    "inches out": ("G28\nG20\nG1 X7 Y7\nG1 X8\n", 4, "X=203.20 (allowed 0..200)"),
    "G92 shift out": ("G28\nG1 X100 Y100\nG92 X0\nG1 X110\n", 4, "X=210.00"),
    "below the bed": ("G28\nG1 Z-0.5\n", 2, "Z=-0.50 (allowed 0..100)"),
    "long move": ("G28\nG1 X10 Y10\nG1 X190 Y190\n", 3, "single move of 254.6 mm"),
    "arc bulging out": ("G28\nG1 X100 Y195\nG2 X120 Y195 I10 J0\n", 3, "Y=205.00"),
    "arc end off its circle": ("G28\nG1 X100 Y100\nG2 X120 Y105 I10\n", 3, "off its circle"),
    "arc radius too small": ("G28\nG1 X100 Y100\nG2 X120 Y100 R5\n", 3, "shorter than half"),
    "arc without centre": ("G28\nG1 X100 Y100\nG2 X120 Y100\n", 3, "either I/J"),
    "arc in another plane": ("G28\nG18\n", 2, "unknown command G18 (arcs are G2/G3"),
    "unknown command": ("G28\nM600\n", 2, "unknown command M600"),
    "unknown parameter": ("G28\nG1 X10 Q4\n", 2, "G1 does not take Q"),
    "value missing": ("G28\nG1 X\n", 2, "X needs a number"),
    "bad checksum": ("N1 G28*1\n", 1, "checksum mismatch: the line says *1, its bytes give *18"),
    "line numbers going back": ("N10 G28\nN5 G1 X1\n", 2, "line number N5 does not follow N10"),
    "unreadable word": ("G28\nG1 X10 Y=5\n", 2, "cannot read '=5'"),
    "unclosed comment": ("G28 (home\n", 1, "'(' comment is not closed"),
    "feedrate": ("G28\nG1 X10 F9000\n", 2, "F9000 mm/min is above MAX_FEEDRATE 6000"),
    "hotend too hot": ("M109 S300\n", 1, "S300 °C is above MAX_HOTEND_TEMP 260"),
    "bed too hot": ("M140 S120\n", 1, "S120 °C is above MAX_BED_TEMP 100"),
    "missing tool": ("T1\n", 1, "tool T1 does not exist (EXTRUDERS = 1)"),
    "two commands": ("G0 G1 X1\n", 1, "one command per line, found G0 and G1"),
    "coordinates alone": ("X10 Y10\n", 1, "parameters without a command"),
}


@pytest.mark.parametrize(("gcode", "line", "message"), INVALID.values(), ids=INVALID.keys())
def test_each_broken_rule_is_reported_with_its_line(
    tmp_path: Path, gcode: str, line: int, message: str
) -> None:
    passed, summary = validate(tmp_path, gcode)

    assert not passed
    reported = [entry for entry in summary.splitlines() if entry.strip().startswith("part.gcode:")]
    assert any(entry.strip().startswith(f"part.gcode:{line}: ") for entry in reported), summary
    assert message in summary


def test_unknown_start_is_counted_not_guessed(tmp_path: Path) -> None:
    passed, summary = validate(tmp_path, "G1 X10 Y10\nG1 Z5\nG1 X20\n")

    assert passed, summary
    assert "note: 2 move(s) started where the position was unknown" in summary


def test_svg_is_well_formed_for_any_file_name(tmp_path: Path) -> None:
    validate(tmp_path, "G28\nG1 X10 Y10 E1\n", name="a <b> & 'c'.nc")

    svg = ET.parse(tmp_path / "task" / "results" / "toolpath-a <b> & 'c'.svg").getroot()
    assert "a <b> & 'c'.nc" in "".join(svg.itertext())


def test_files_in_folders_and_all_suffixes_are_checked(tmp_path: Path) -> None:
    task = tmp_path / "task"
    (task / "parts").mkdir(parents=True)
    (task / "parts" / "a.GCODE").write_text("G28\n")
    (task / "parts" / "a.gc").write_text("G28\nG1 X500\n")

    passed, summary = validate(tmp_path, "G28\n", name="b.nc")

    assert not passed
    assert "FAIL - 1 of 3 file(s) invalid" in summary
    assert "parts/a.gc:2: outside the work volume" in summary
    pictures = sorted(p.name for p in (task / "results").glob("toolpath-*.svg"))
    assert pictures == ["toolpath-a-2.svg", "toolpath-a.svg", "toolpath-b.svg"]
