"""A top view (XY) of a file's tool path over the machine's work volume, as SVG.

Lets a student see at a glance what the validator saw: the bed, where the nozzle
travelled, where it extruded, and the moves that broke a rule, in red. Built with
ElementTree so that any file name or text ends up as well-formed XML.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator

from gcode_printer import Printer
from gcode_report import FileReport, Segment

PIXELS_PER_MM = 3.0
MAX_PIXELS = 900.0
MARGIN = 10.0  # mm around everything drawn
HEADER = 14.0  # mm above the drawing for the title and legend
STYLES = {
    "volume": {"fill": "#f7f7f2", "stroke": "#555555", "stroke-width": "0.5"},
    "grid": {"stroke": "#e2e2da", "stroke-width": "0.2"},
    "travel": {
        "fill": "none",
        "stroke": "#4a90d9",
        "stroke-width": "0.3",
        "stroke-dasharray": "1.5 1",
    },
    "extrude": {
        "fill": "none",
        "stroke": "#e07b00",
        "stroke-width": "0.5",
        "stroke-linejoin": "round",
    },
    "bad": {"fill": "none", "stroke": "#d0021b", "stroke-width": "1.0"},
}


def fmt(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


class Canvas:
    """Machine mm to SVG user units: y flipped, so the bed is seen from above."""

    def __init__(self, printer: Printer, report: FileReport) -> None:
        xs = [0.0, printer.max_x] + [x for s in report.segments for x, _ in s.points]
        ys = [0.0, printer.max_y] + [y for s in report.segments for _, y in s.points]
        self.left, self.right = min(xs) - MARGIN, max(xs) + MARGIN
        self.bottom, self.top = min(ys) - MARGIN, max(ys) + MARGIN + HEADER
        self.width, self.height = self.right - self.left, self.top - self.bottom

    def x(self, value: float) -> str:
        return fmt(value - self.left)

    def y(self, value: float) -> str:
        return fmt(self.top - value)

    def points(self, points: tuple[tuple[float, float], ...]) -> str:
        return " ".join(f"{self.x(px)},{self.y(py)}" for px, py in points)


def chained(segments: list[Segment]) -> Iterator[tuple[str, list[tuple[float, float]]]]:
    """Consecutive segments of one kind as one polyline (a file has thousands of moves)."""
    kind, line = "", list[tuple[float, float]]()
    for segment in segments:
        this = "bad" if segment.bad else "extrude" if segment.extrude else "travel"
        if this == kind and line and math.dist(line[-1], segment.points[0]) < 1e-9:
            line.extend(segment.points[1:])
            continue
        if line:
            yield kind, line
        kind, line = this, list(segment.points)
    if line:
        yield kind, line


def draw_bed(svg: ET.Element, canvas: Canvas, printer: Printer) -> None:
    """The work volume's XY face with a 10 mm grid and its size written at the corners."""
    ET.SubElement(
        svg,
        "rect",
        STYLES["volume"],
        x=canvas.x(0),
        y=canvas.y(printer.max_y),
        width=fmt(printer.max_x),
        height=fmt(printer.max_y),
    )
    grid = ET.SubElement(svg, "g", STYLES["grid"])
    for gx in range(10, math.ceil(printer.max_x), 10):
        ET.SubElement(
            grid,
            "line",
            x1=canvas.x(gx),
            x2=canvas.x(gx),
            y1=canvas.y(0),
            y2=canvas.y(printer.max_y),
        )
    for gy in range(10, math.ceil(printer.max_y), 10):
        ET.SubElement(
            grid,
            "line",
            x1=canvas.x(0),
            x2=canvas.x(printer.max_x),
            y1=canvas.y(gy),
            y2=canvas.y(gy),
        )
    labels = ET.SubElement(
        svg, "g", {"fill": "#555555", "font-size": "3", "font-family": "sans-serif"}
    )
    ET.SubElement(labels, "text", x=canvas.x(0), y=fmt(float(canvas.y(0)) + 4)).text = "0,0"
    corner = ET.SubElement(
        labels, "text", x=canvas.x(printer.max_x), y=fmt(float(canvas.y(printer.max_y)) - 1.5)
    )
    corner.set("text-anchor", "end")
    corner.text = f"{fmt(printer.max_x)} x {fmt(printer.max_y)} mm"


def draw_header(svg: ET.Element, canvas: Canvas, report: FileReport) -> None:
    """Title and legend in the space above the bed."""
    head = ET.SubElement(svg, "g", {"font-family": "sans-serif", "font-size": "4"})
    verdict = "valid" if report.valid else f"{len(report.problems)} error(s)"
    title = ET.SubElement(head, "text", x=fmt(MARGIN / 2), y="6", fill="#222222")
    title.text = f"{report.name} - top view (XY) - {verdict}"
    for index, (kind, label) in enumerate(
        (("extrude", "extrude"), ("travel", "travel"), ("bad", "error"))
    ):
        left = MARGIN / 2 + index * 28
        ET.SubElement(head, "line", STYLES[kind], x1=fmt(left), x2=fmt(left + 8), y1="11", y2="11")
        ET.SubElement(head, "text", x=fmt(left + 10), y="12.3", fill="#444444").text = label


def render_svg(report: FileReport, printer: Printer) -> str:
    """The whole picture as an SVG document."""
    canvas = Canvas(printer, report)
    scale = min(PIXELS_PER_MM, MAX_PIXELS / max(canvas.width, canvas.height))
    svg = ET.Element(
        "svg",
        xmlns="http://www.w3.org/2000/svg",
        width=fmt(canvas.width * scale),
        height=fmt(canvas.height * scale),
        viewBox=f"0 0 {fmt(canvas.width)} {fmt(canvas.height)}",
    )
    ET.SubElement(svg, "title").text = f"Tool path of {report.name} on {printer.name}"
    ET.SubElement(svg, "rect", width="100%", height="100%", fill="white")
    draw_bed(svg, canvas, printer)
    lines = list(chained(report.segments))
    for kind in ("travel", "extrude", "bad"):  # errors drawn last, on top
        layer = ET.SubElement(svg, "g", STYLES[kind])
        layer.set("class", kind)
        for line_kind, points in lines:
            if line_kind == kind:
                ET.SubElement(layer, "polyline", points=canvas.points(tuple(points)))
    draw_header(svg, canvas, report)
    ET.indent(svg, space=" ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(svg, encoding="unicode") + "\n"
