"""python-check: is a Python submission complete, and does every .py file compile?

The first stage of a Python lab: it bounces what a human grader would bounce at once (a
missing file, code that does not even parse) before any test runs. It reads the
submission in the task directory (TASK_DIR, else the working directory, which the node
sets to the mount point), writes `results/check-report.txt` for people and
`results/check.json` for programs, prints the report, and exits 0 iff all is in order.

Settings (environment):
  REQUIRED_FILES  space-separated glob patterns relative to the submission root
                  (`*`, `?`, `[ab]`, `**/` for any folder depth); each must match a file.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULTS = "results"
# Folders that are never the student's own code: tool state, zip junk, our own output.
SKIPPED_DIRS = frozenset({".git", ".hg", ".svn", "__MACOSX", "__pycache__", RESULTS})


@dataclass(frozen=True)
class Requirement:
    """A REQUIRED_FILES pattern, the files that satisfy it, and near misses as a hint."""

    pattern: str
    matches: list[str]
    near_misses: list[str]


@dataclass(frozen=True)
class CompileError:
    """Why one file does not compile, located so that a student can find it."""

    file: str
    line: int | None
    column: int | None
    end_column: int | None
    message: str
    text: str | None


@dataclass
class CheckResult:
    """Everything the check found; `passed` is derived from it, never set by hand."""

    required: list[Requirement] = field(default_factory=list)
    python_files: list[str] = field(default_factory=list)
    compile_errors: list[CompileError] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        return [r.pattern for r in self.required if not r.matches]

    @property
    def problems(self) -> int:
        return len(self.missing) + len(self.compile_errors) + (0 if self.python_files else 1)

    @property
    def passed(self) -> bool:
        return self.problems == 0


def is_skipped(directory: Path) -> bool:
    """A folder to leave out: tool state, zip junk, our results, or a virtualenv."""
    return directory.name in SKIPPED_DIRS or (directory / "pyvenv.cfg").is_file()


def submission_files(root: Path) -> list[Path]:
    """The submission's regular files as paths relative to `root`, in a stable order."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        base = Path(folder)
        dirs[:] = sorted(d for d in dirs if not is_skipped(base / d))
        found.extend(
            (base / name).relative_to(root)
            for name in sorted(files)
            if (base / name).is_file() and not (base / name).is_symlink()
        )
    return found


def glob_inside(root: Path, pattern: str) -> Iterator[Path]:
    """Paths under `root` matching `pattern`, relative; nothing for patterns that leave it."""
    if pattern.startswith("/") or ".." in Path(pattern).parts:
        return
    for path in root.glob(pattern):
        yield path.relative_to(root)


def find_required(root: Path, patterns: list[str], files: list[Path]) -> list[Requirement]:
    """For each pattern: the submission files it matches, or names it almost matches."""
    known = set(files)
    requirements = []
    for pattern in patterns:
        matches = sorted(str(p) for p in glob_inside(root, pattern) if p in known)
        near = (
            []
            if matches
            else [str(f) for f in files if fnmatch.fnmatch(str(f).lower(), pattern.lower())]
        )
        requirements.append(Requirement(pattern, matches, near))
    return requirements


def compile_error(file: str, exc: SyntaxError | ValueError | RecursionError) -> CompileError:
    """A compile() failure as a located error (a ValueError is, e.g., a NUL byte)."""
    if not isinstance(exc, SyntaxError):
        return CompileError(file, None, None, None, str(exc) or type(exc).__name__, None)
    text = exc.text.rstrip("\r\n\f") if exc.text else None
    same_line = exc.end_lineno in (None, exc.lineno)
    return CompileError(
        file, exc.lineno, exc.offset, exc.end_offset if same_line else None, exc.msg, text
    )


def check_compiles(root: Path, relative: Path) -> CompileError | None:
    """Compile one file in memory: from bytes, so coding cookies and BOMs are honoured."""
    try:
        source = (root / relative).read_bytes()
    except OSError as exc:
        return CompileError(str(relative), None, None, None, f"cannot read: {exc.strerror}", None)
    try:
        compile(source, str(relative), "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError) as exc:
        return compile_error(str(relative), exc)
    return None


def run_check(root: Path, patterns: list[str]) -> CheckResult:
    """Check the submission at `root` against the required patterns."""
    files = submission_files(root)
    result = CheckResult(required=find_required(root, patterns, files))
    for relative in files:
        if relative.suffix == ".py":
            result.python_files.append(str(relative))
            error = check_compiles(root, relative)
            if error is not None:
                result.compile_errors.append(error)
    return result


def pointer(error: CompileError) -> list[str]:
    """The offending line with a caret under the column, as a compiler would show it."""
    if error.text is None or error.line is None:
        return []
    column = max(error.column or 1, 1)
    width = max((error.end_column or column + 1) - column, 1)
    indent = "".join(c if c == "\t" else " " for c in error.text[: column - 1])
    gutter = " " * len(str(error.line))
    return [f"      {error.line} | {error.text}", f"      {gutter} | {indent}{'^' * width}"]


def required_section(result: CheckResult, patterns: list[str]) -> list[str]:
    """One line per required pattern: what satisfied it, or that nothing did."""
    if not patterns:
        return ["Required files: none configured (REQUIRED_FILES is empty)."]
    lines = [f"Required files (REQUIRED_FILES = {' '.join(patterns)!r}):"]
    for req in result.required:
        if req.matches:
            lines.append(f"  ok       {req.pattern}  ->  {', '.join(req.matches)}")
            continue
        hint = f"  (did you mean {', '.join(req.near_misses)}? names are case-sensitive)"
        lines.append(f"  MISSING  {req.pattern}{hint if req.near_misses else ''}")
    return lines


def compile_section(result: CheckResult) -> list[str]:
    """Every file that does not compile, with the line and a caret under the error."""
    if not result.python_files:
        return ["Python files: NONE found - a Python submission needs at least one .py file."]
    compiled = len(result.python_files) - len(result.compile_errors)
    lines = [f"Python files: {len(result.python_files)} found, {compiled} compile."]
    for error in result.compile_errors:
        where = "".join(
            f", {label} {value}"
            for label, value in (("line", error.line), ("column", error.column))
            if value is not None
        )
        lines += [f"  ERROR  {error.file}{where}: {error.message}", *pointer(error)]
    return lines


def render_report(result: CheckResult, patterns: list[str]) -> str:
    """The human-readable report: verdict first, then each section."""
    if result.passed:
        verdict = "python-check: PASS - all required files present, every .py file compiles."
    else:
        verdict = f"python-check: FAIL - {result.problems} problem(s) found."
    lines = [verdict, "", *required_section(result, patterns), "", *compile_section(result)]
    return "\n".join(lines) + "\n"


def render_json(result: CheckResult) -> str:
    """The machine-readable result: the same facts as the report, no prose."""
    document = {
        "executor": "python-check",
        "passed": result.passed,
        "problems": result.problems,
        "missing": result.missing,
        "required": [asdict(r) for r in result.required],
        "python_files": result.python_files,
        "compile_errors": [asdict(e) for e in result.compile_errors],
    }
    return json.dumps(document, indent=2) + "\n"


def task_root(environ: Mapping[str, str]) -> Path:
    """The submission folder: TASK_DIR if set, else the working directory (the mount)."""
    return Path(environ.get("TASK_DIR") or Path.cwd())


def main() -> int:
    root = task_root(os.environ)
    patterns = os.environ.get("REQUIRED_FILES", "").split()
    result = run_check(root, patterns)
    report = render_report(result, patterns)
    results = root / RESULTS
    results.mkdir(exist_ok=True)
    (results / "check-report.txt").write_text(report, encoding="utf-8")
    (results / "check.json").write_text(render_json(result), encoding="utf-8")
    sys.stdout.write(report)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
