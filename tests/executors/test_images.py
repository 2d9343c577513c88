"""Each executor image on each of its example submissions, in the node's sandbox.

The example's name says the expected outcome (`pass-*` PASS, `fail-*` FAIL), judged by the
executor's own success rule from its executor.toml; the result files must say why.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support.executors import EXECUTOR_NAMES, EXECUTORS, Run, RunExecutor

SVG = "{http://www.w3.org/2000/svg}"
EXAMPLES = [
    (name, example.name)
    for name in EXECUTOR_NAMES
    for example in sorted((EXECUTORS / name / "examples").iterdir())
    if example.is_dir()
]


def example(executor: str, name: str) -> Path:
    return EXECUTORS / executor / "examples" / name


def line_of(path: Path, text: str) -> int:
    """The 1-based number of the first line of `path` containing `text`."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} is not in {path}")


def assert_no_bytecode(run: Run) -> None:
    leftovers = [p for p in run.task.rglob("*") if p.name == "__pycache__" or p.suffix == ".pyc"]
    assert not leftovers, f"bytecode left in the task directory: {leftovers}"


@pytest.mark.parametrize(("executor", "name"), EXAMPLES, ids=[f"{e}/{n}" for e, n in EXAMPLES])
def test_example_outcome_follows_its_name(
    run_executor: RunExecutor, executor: str, name: str
) -> None:
    run = run_executor(executor, example(executor, name))

    assert run.passed is name.startswith("pass-"), run.output
    if run.spec.rule.marker is not None:
        assert run.exit_code == 0, f"a marker executor exits 0 unless it broke:\n{run.output}"
    assert_no_bytecode(run)


# -- python-check ---------------------------------------------------------------------


def test_python_check_passes_a_complete_submission(run_executor: RunExecutor) -> None:
    run = run_executor("python-check", example("python-check", "pass-complete"))

    report = json.loads(run.read("results/check.json"))
    assert report["passed"] is True
    assert report["python_files"] == ["solution.py", "tools/wordfreq.py"]
    assert run.read("results/check-report.txt").startswith("python-check: PASS")
    assert run.read("results/check-report.txt") in run.output


def test_python_check_names_the_missing_file(run_executor: RunExecutor) -> None:
    run = run_executor("python-check", example("python-check", "fail-missing-readme"))

    assert run.exit_code == 1
    text = run.read("results/check-report.txt")
    assert "MISSING  README.md" in text
    assert "ok       solution.py" in text
    assert json.loads(run.read("results/check.json"))["missing"] == ["README.md"]
    assert "MISSING  README.md" in run.output


def test_python_check_shows_the_syntax_error_line(run_executor: RunExecutor) -> None:
    folder = example("python-check", "fail-syntax-error")
    bad_line = line_of(folder / "solution.py", "if not words")

    run = run_executor("python-check", folder)

    assert run.exit_code == 1
    text = run.read("results/check-report.txt")
    assert f"solution.py, line {bad_line}, column 17: expected ':'" in text
    assert f"{bad_line} |     if not words" in text
    [error] = json.loads(run.read("results/check.json"))["compile_errors"]
    assert (error["file"], error["line"], error["column"]) == ("solution.py", bad_line, 17)


def test_python_check_fails_a_submission_without_python(
    run_executor: RunExecutor, tmp_path: Path
) -> None:
    (tmp_path / "README.md").write_text("# notes only\n")
    (tmp_path / "solution.txt").write_text("print('hi')\n")

    run = run_executor("python-check", tmp_path)

    assert run.exit_code == 1
    assert "MISSING  solution.py" in run.output
    assert "Python files: NONE found" in run.output


# -- pytest-grader --------------------------------------------------------------------

FAILING_TESTS = {
    "test_word_count_ignores_irregular_whitespace",
    "test_word_count_of_blank_text_is_zero",
    "test_capitalize_words_keeps_spacing_and_apostrophes",
    "test_most_common_word_ties_and_empty_text",
}
ASSIGNMENT_TESTS = 10


def junit_counts(run: Run) -> dict[str, int]:
    """testcase count and each kind of problem, from results/junit.xml."""
    root = ET.fromstring(run.read("results/junit.xml"))
    cases = root.findall(".//testcase")
    counts = {"tests": len(cases)}
    for kind in ("failure", "error", "skipped"):
        counts[kind] = sum(1 for case in cases if case.find(kind) is not None)
    return counts


def failing_names(run: Run) -> set[str]:
    root = ET.fromstring(run.read("results/junit.xml"))
    return {
        case.get("name", "")
        for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    }


def test_pytest_grader_passes_a_correct_solution(run_executor: RunExecutor) -> None:
    run = run_executor("pytest-grader", example("pytest-grader", "pass-all"))

    assert junit_counts(run) == {"tests": ASSIGNMENT_TESTS, "failure": 0, "error": 0, "skipped": 0}
    summary = run.read("results/summary.txt")
    assert summary.startswith(f"pytest-grader: PASS - {ASSIGNMENT_TESTS} of {ASSIGNMENT_TESTS}")
    assert summary in run.output


def test_pytest_grader_lists_each_failing_test(run_executor: RunExecutor) -> None:
    run = run_executor("pytest-grader", example("pytest-grader", "fail-some-tests"))

    assert run.exit_code == 1
    counts = junit_counts(run)
    assert counts == {"tests": ASSIGNMENT_TESTS, "failure": 4, "error": 0, "skipped": 0}
    assert failing_names(run) == FAILING_TESTS
    summary = run.read("results/summary.txt")
    assert f"tests: {ASSIGNMENT_TESTS}, passed: 6, failed: 4, errors: 0, skipped: 0" in summary
    for test in FAILING_TESTS:
        assert f"test_textutils::{test} [failed]: " in summary
    assert "ValueError: max() arg is an empty sequence" in summary


def test_pytest_grader_explains_a_missing_solution(run_executor: RunExecutor) -> None:
    run = run_executor("pytest-grader", example("pytest-grader", "fail-no-solution"))

    assert run.exit_code == 1
    assert junit_counts(run) == {"tests": ASSIGNMENT_TESTS, "failure": 0, "error": 10, "skipped": 0}
    summary = run.read("results/summary.txt")
    assert "solution.py not found in the submission (Python files there: textutils.py)" in summary
    assert "Every test not passed has the same reason" in summary


def hostile(tmp_path: Path, solution: str, **files: str) -> Path:
    """A submission whose solution.py is the correct one plus `solution` appended."""
    correct = example("pytest-grader", "pass-all") / "solution.py"
    (tmp_path / "solution.py").write_text(correct.read_text() + "\n" + solution)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("solution", "says"),
    [
        ("import os\nos._exit(0)\n", "pytest wrote no JUnit report"),
        ("import pytest\npytest.skip('nothing to see', allow_module_level=True)\n", "[skipped]"),
        ("def word_count(text):\n    while True:\n        pass\n", "took longer than 2 s"),
        ("def word_count(text):\n    return len(b'x' * 10**9)\n", "killed by SIGKILL"),
        ("raise SystemExit(0)\n", "importing solution.py failed: SystemExit"),
    ],
    ids=["os-exit-0", "skip-everything", "endless-loop", "memory-hog", "exit-at-import"],
)
def test_pytest_grader_is_not_fooled(
    run_executor: RunExecutor, tmp_path: Path, solution: str, says: str
) -> None:
    run = run_executor("pytest-grader", hostile(tmp_path, solution), TEST_TIMEOUT="2")

    assert run.exit_code == 1, run.output
    assert says in run.read("results/summary.txt")


def test_pytest_grader_ignores_a_fake_pytest_in_the_submission(
    run_executor: RunExecutor, tmp_path: Path
) -> None:
    fake = "import sys\nprint('fake pytest')\nsys.exit(0)\n"
    run = run_executor("pytest-grader", hostile(tmp_path, "", **{"pytest.py": fake}))

    assert "fake pytest" not in run.output
    assert junit_counts(run)["tests"] == ASSIGNMENT_TESTS
    assert run.exit_code == 0


# -- gcode-check ----------------------------------------------------------------------


def parse_svg(run: Run, name: str) -> ET.Element:
    root = ET.fromstring(run.read(f"results/{name}"))
    assert root.tag == f"{SVG}svg"
    return root


def polylines(root: ET.Element, kind: str) -> list[ET.Element]:
    return [
        line
        for group in root.iter(f"{SVG}g")
        if group.get("class") == kind
        for line in group.iter(f"{SVG}polyline")
    ]


def test_gcode_check_passes_the_calibration_square(run_executor: RunExecutor) -> None:
    run = run_executor("gcode-check", example("gcode-check", "pass-calibration-square"))

    assert run.read("results/PASSED")
    summary = run.read("results/summary.txt")
    assert summary.startswith("gcode-check: PASS - 1 file(s) checked, all valid")
    assert "== calibration-square.gcode: VALID ==" in summary
    assert "lines 76, moves 43 (arcs 0), layers 6" in summary
    assert "printed area X 5.00..120.00, Y 20.00..120.00, Z 0.20..1.00 mm" in summary
    assert "Machine: Lab printer" in summary
    svg = parse_svg(run, "toolpath-calibration-square.svg")
    assert polylines(svg, "extrude")
    assert polylines(svg, "travel")
    assert not polylines(svg, "bad")
    assert summary in run.output


def test_gcode_check_names_the_line_outside_the_volume(run_executor: RunExecutor) -> None:
    folder = example("gcode-check", "fail-out-of-bounds")
    first_bad = line_of(folder / "name-plate.gcode", "X235")

    run = run_executor("gcode-check", folder)

    assert not (run.task / "results" / "PASSED").exists()
    summary = run.read("results/summary.txt")
    assert "== name-plate.gcode: INVALID (8 error(s)) ==" in summary
    assert (
        f"name-plate.gcode:{first_bad}: outside the work volume: X=235.00 (allowed 0..220)"
        in summary
    )
    assert polylines(parse_svg(run, "toolpath-name-plate.svg"), "bad")


def test_gcode_check_names_the_unknown_commands(run_executor: RunExecutor) -> None:
    folder = example("gcode-check", "fail-unknown-command")

    run = run_executor("gcode-check", folder)

    assert not (run.task / "results" / "PASSED").exists()
    summary = run.read("results/summary.txt")
    for command in ("G29", "M204"):
        line = line_of(folder / "bracket.gcode", command)
        assert f"bracket.gcode:{line}: unknown command {command}" in summary
    assert "INVALID (2 error(s))" in summary
    parse_svg(run, "toolpath-bracket.svg")


def test_gcode_check_fails_without_gcode_files(run_executor: RunExecutor, tmp_path: Path) -> None:
    (tmp_path / "model.stl").write_text("solid empty\nendsolid empty\n")

    run = run_executor("gcode-check", tmp_path)

    assert run.exit_code == 0
    assert not run.passed
    assert "no G-code files (*.gcode, *.gc, *.nc)" in run.read("results/summary.txt")


def test_gcode_check_reports_a_broken_machine_description(
    run_executor: RunExecutor, tmp_path: Path
) -> None:
    square = example("gcode-check", "pass-calibration-square") / "calibration-square.gcode"
    (tmp_path / "square.gcode").write_text(square.read_text())

    run = run_executor("gcode-check", tmp_path, PRINTER_PROPERTIES="/task/missing.properties")

    assert run.exit_code == 2
    assert not run.passed
    assert "the machine description cannot be used" in run.output
