"""gcode-check: may these G-code files run on our machine?

Validates every `*.gcode`, `*.gc` and `*.nc` file of the submission against the machine
described in printer.properties (section [PRINTER]; the format of the system ulos-py
replaces, so labs keep their files). Writes `results/summary.txt`, one
`results/toolpath-<stem>.svg` per file, and the marker `results/PASSED` only if every file
is valid. The verdict is the marker; the exit status is 0 unless the validator itself
could not run (2: an unusable machine description).

Settings (environment):
  PRINTER_PROPERTIES  the machine description (default: printer.properties next to this file)
  TASK_DIR            the submission (default: the working directory, i.e. the mount point)
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from gcode_machine import validate_file
from gcode_printer import ConfigError, Printer, load_printer
from gcode_report import FileReport
from gcode_svg import render_svg

HERE = Path(__file__).resolve().parent
RESULTS = "results"
MARKER = "PASSED"
SUFFIXES = frozenset({".gcode", ".gc", ".nc"})
SKIPPED_DIRS = frozenset({RESULTS, "__MACOSX", ".git"})
MAX_LISTED = 50  # errors listed per file; a broken slicer setting can break every line


def gcode_files(root: Path) -> list[Path]:
    """The submission's G-code files, relative to `root`, in a stable order."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(files):
            path = Path(folder) / name
            if path.suffix.lower() in SUFFIXES and path.is_file() and not path.is_symlink():
                found.append(path.relative_to(root))
    return found


def picture_name(relative: Path, taken: set[str]) -> str:
    """`toolpath-<stem>.svg`, numbered when two files share a stem."""
    name, number = f"toolpath-{relative.stem}.svg", 1
    while name in taken:
        number += 1
        name = f"toolpath-{relative.stem}-{number}.svg"
    taken.add(name)
    return name


def box(low: list[float], high: list[float]) -> str:
    """`X 1.00..2.00, Y ..., Z ... mm`, with `?` for an axis never known."""
    spans = [
        f"{axis} " + ("?" if math.isinf(lo) else f"{lo:.2f}..{hi:.2f}")
        for axis, lo, hi in zip("XYZ", low, high, strict=True)
    ]
    return ", ".join(spans) + " mm"


def file_section(report: FileReport, picture: str) -> list[str]:
    """One file's statistics and errors."""
    verdict = "VALID" if report.valid else f"INVALID ({len(report.problems)} error(s))"
    lines = [
        f"== {report.name}: {verdict} ==",
        f"  lines {report.lines}, moves {report.moves} (arcs {report.arcs}), "
        f"layers {len(report.layers)}",
        f"  travel {report.travel_mm:.1f} mm, extrude {report.extrude_mm:.1f} mm, "
        f"filament {report.filament_mm:.1f} mm",
        f"  bounding box {box(report.low, report.high)}" if report.moves else "  no moves",
        f"  printed area {box(report.printed_low, report.printed_high)}"
        if report.extrude_mm
        else "  printed area: none (nothing extruded)",
        f"  tool path picture: {RESULTS}/{picture}",
    ]
    if report.unmeasured_moves:
        lines.append(
            f"  note: {report.unmeasured_moves} move(s) started where the position was unknown "
            "(before G28/G92 or an absolute move); their length was not checked"
        )
    if report.valid:
        return [*lines, "  errors: none"]
    lines.append("  errors:")
    for problem in report.problems[:MAX_LISTED]:
        lines.append(f"    {report.name}:{problem.line}: {problem.message}")
        lines.append(f"        | {problem.source[:100]}")
    if len(report.problems) > MAX_LISTED:
        lines.append(f"    ... and {len(report.problems) - MAX_LISTED} more")
    return lines


def render_summary(printer: Printer, sections: list[list[str]], reports: list[FileReport]) -> str:
    """The summary: verdict, machine, then each file."""
    if not reports:
        verdict = "FAIL - no G-code files (*.gcode, *.gc, *.nc) in the submission"
    elif all(r.valid for r in reports):
        verdict = f"PASS - {len(reports)} file(s) checked, all valid"
    else:
        bad = sum(1 for r in reports if not r.valid)
        verdict = f"FAIL - {bad} of {len(reports)} file(s) invalid"
    lines = [f"gcode-check: {verdict}", f"Machine: {printer.describe()}"]
    for section in sections:
        lines += ["", *section]
    return "\n".join(lines) + "\n"


def clear_results(results: Path) -> None:
    """Remove what an earlier run of this validator left, so nothing stale survives."""
    results.mkdir(exist_ok=True)
    for old in [results / MARKER, results / "summary.txt", *results.glob("toolpath-*.svg")]:
        old.unlink(missing_ok=True)


def main() -> int:
    root = Path(os.environ.get("TASK_DIR") or Path.cwd())
    results = root / RESULTS
    clear_results(results)
    properties = Path(os.environ.get("PRINTER_PROPERTIES") or HERE / "printer.properties")
    try:
        printer = load_printer(properties)
    except ConfigError as exc:
        message = f"gcode-check: ERROR - the machine description cannot be used: {exc}\n"
        (results / "summary.txt").write_text(message, encoding="utf-8")
        sys.stdout.write(message)
        return 2
    reports, sections, taken = [], [], set[str]()
    for relative in gcode_files(root):
        report = validate_file(root / relative, str(relative), printer)
        picture = picture_name(relative, taken)
        (results / picture).write_text(render_svg(report, printer), encoding="utf-8")
        reports.append(report)
        sections.append(file_section(report, picture))
    summary = render_summary(printer, sections, reports)
    (results / "summary.txt").write_text(summary, encoding="utf-8")
    sys.stdout.write(summary)
    if reports and all(r.valid for r in reports):
        (results / MARKER).write_text(f"{len(reports)} file(s) valid\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
