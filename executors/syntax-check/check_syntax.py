"""syntax-check: does every source file of the submission parse?

A lab's first stage for the languages it teaches: it bounces a submission whose files do
not even parse before anything runs them. Each file is parsed by its suffix with a
tree-sitter grammar (the per-language wheels ship compiled parsers, so nothing is
fetched at run time) or, for Gherkin `.feature` files, with the official Cucumber parser.
Every syntax error is reported as file:line:column with the offending line and a caret,
in `results/syntax-report.txt` for people and `results/syntax.json` for programs, and on
stdout. Exit 0 iff every file parses and at least one file was checked; 1 otherwise; 2
when the stage itself is set up wrong (an unknown language).

Settings (environment):
  LANGUAGES   space-separated languages this stage checks (default: all of them):
              javascript typescript kotlin swift java python c gherkin
  TASK_DIR    the submission (default: the working directory, the node's mount point)
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = "results"
# Folders that are never the student's own code: tool state, zip junk, installed
# packages, our own output.
SKIPPED_DIRS = frozenset(
    {".git", ".hg", ".svn", "__MACOSX", "__pycache__", "node_modules", ".gradle", RESULTS}
)
MAX_ERRORS_PER_FILE = 20

# language -> (suffixes, grammar module, function returning the compiled language)
TREE_SITTER: dict[str, tuple[tuple[str, ...], str, str]] = {
    "javascript": ((".js", ".mjs", ".cjs", ".jsx"), "tree_sitter_javascript", "language"),
    "typescript": ((".ts", ".mts", ".cts"), "tree_sitter_typescript", "language_typescript"),
    "tsx": ((".tsx",), "tree_sitter_typescript", "language_tsx"),
    "kotlin": ((".kt", ".kts"), "tree_sitter_kotlin", "language"),
    "swift": ((".swift",), "tree_sitter_swift", "language"),
    "java": ((".java",), "tree_sitter_java", "language"),
    "python": ((".py", ".pyi"), "tree_sitter_python", "language"),
    "c": ((".c", ".h"), "tree_sitter_c", "language"),
}
GHERKIN_SUFFIXES = (".feature",)
# The names a stage may list; TypeScript includes its JSX dialect (.tsx).
LANGUAGES = ("javascript", "typescript", "kotlin", "swift", "java", "python", "c", "gherkin")


@dataclass(frozen=True)
class ParseError:
    """One syntax error, located so that a student can find it (1-based, in characters)."""

    file: str
    line: int
    column: int
    message: str
    text: str


@dataclass
class Report:
    languages: list[str]
    checked: dict[str, str] = field(default_factory=dict)  # file -> language
    errors: list[ParseError] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checked) and not self.errors


Check = Callable[[str, bytes], list[ParseError]]


def printable(text: str) -> str:
    """Control characters (but tabs) shown as `?`, so a file cannot drive the terminal."""
    return "".join(c if c == "\t" or c.isprintable() else "?" for c in text)


def line_text(source: bytes, line: int) -> str:
    lines = source.split(b"\n")
    raw = lines[line - 1] if 0 < line <= len(lines) else b""
    return raw.rstrip(b"\r").decode("utf-8", errors="replace")


def tree_sitter_checker(module_name: str, function: str) -> Check:
    """A check that parses with the grammar `module_name.function()`."""
    import importlib

    import tree_sitter

    grammar = importlib.import_module(module_name)
    parser = tree_sitter.Parser(tree_sitter.Language(getattr(grammar, function)()))

    def check(name: str, source: bytes) -> list[ParseError]:
        tree = parser.parse(source)
        if not tree.root_node.has_error:
            return []
        return [located(name, source, *found) for found in error_nodes(tree.root_node)]

    return check


def error_nodes(root: Any) -> Iterator[tuple[int, int, str]]:
    """(row, byte column, message) of each outermost ERROR or MISSING node, in order."""
    end_of_file = root.end_point
    stack = [root]
    while stack:
        node = stack.pop()
        row, column = node.start_point
        if node.is_missing:
            yield row, column, f"missing {node.type!r}"
        elif node.is_error:
            yield row, column, error_message(node, end_of_file)
        elif node.has_error:
            stack.extend(reversed(node.children))


def error_message(node: Any, end_of_file: Any) -> str:
    """What the parser could not place: the text, or the span it could not make sense of."""
    text = node.text.decode("utf-8", errors="replace").strip()
    if node.end_point.row == node.start_point.row:
        shown = text if len(text) <= 40 else text[:40] + "..."
        return f"unexpected {shown!r}" if shown else "unexpected input"
    if node.end_point.row >= end_of_file.row:
        return (
            "cannot parse from here to the end of the file (a bracket, brace or string not closed?)"
        )
    return f"cannot parse from here to line {node.end_point.row + 1}"


def located(name: str, source: bytes, row: int, byte_column: int, message: str) -> ParseError:
    lines = source.split(b"\n")
    raw = lines[row] if row < len(lines) else b""
    column = len(raw[:byte_column].decode("utf-8", errors="replace")) + 1
    return ParseError(name, row + 1, column, message, line_text(source, row + 1))


def gherkin_check(name: str, source: bytes) -> list[ParseError]:
    from gherkin.errors import CompositeParserException, ParserException
    from gherkin.parser import Parser

    try:
        Parser().parse(source.decode("utf-8"))
    except CompositeParserException as exc:
        problems = list(exc.errors)
    except ParserException as exc:
        problems = [exc]
    else:
        return []
    errors = []
    for problem in problems:
        where = problem.location or {}
        line = int(where.get("line") or 1)
        column = max(int(where.get("column") or 1), 1)
        message = str(problem).split("): ", 1)[-1]
        errors.append(ParseError(name, line, column, message, line_text(source, line)))
    return errors


def checkers(languages: list[str]) -> dict[str, tuple[str, Check]]:
    """suffix -> (language, check) for the chosen languages."""
    chosen: dict[str, tuple[str, Check]] = {}
    for language in languages:
        if language == "gherkin":
            chosen.update({suffix: ("gherkin", gherkin_check) for suffix in GHERKIN_SUFFIXES})
            continue
        grammars = [language, "tsx"] if language == "typescript" else [language]
        for grammar in grammars:
            suffixes, module_name, function = TREE_SITTER[grammar]
            check = tree_sitter_checker(module_name, function)
            chosen.update({suffix: (language, check) for suffix in suffixes})
    return chosen


def source_files(root: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for file in sorted(files):
            path = Path(folder, file)
            if path.is_file() and not path.is_symlink():
                yield path


def check_tree(root: Path, languages: list[str]) -> Report:
    report = Report(languages)
    by_suffix = checkers(languages)
    for path in source_files(root):
        chosen = by_suffix.get(path.suffix.lower())
        if chosen is None:
            continue
        language, check = chosen
        name = path.relative_to(root).as_posix()
        report.checked[name] = language
        source = path.read_bytes()
        try:
            source.decode("utf-8")
        except UnicodeDecodeError as exc:
            report.errors.append(located(name, source[: exc.start], 0, 0, "not UTF-8 text"))
            continue
        report.errors.extend(check(name, source)[:MAX_ERRORS_PER_FILE])
    return report


def caret_block(error: ParseError) -> list[str]:
    text = printable(error.text)
    prefix = "".join(c if c == "\t" else " " for c in text[: error.column - 1])
    gutter = f"{error.line:>5} | "
    return [f"{gutter}{text}", f"{' ' * (len(gutter) - 2)}| {prefix}^"]


def render(report: Report) -> str:
    wanted = " ".join(report.languages)
    suffixes = ", ".join(sorted(f"*{s}" for s in checkers_suffixes(report.languages)))
    if not report.checked:
        head = f"syntax-check: FAIL - no file to check (languages: {wanted}; looked for {suffixes})"
        return head + "\n"
    files_with_errors = len({e.file for e in report.errors})
    if report.passed:
        head = f"syntax-check: PASS - {len(report.checked)} file(s) checked, no syntax errors"
    else:
        head = (
            f"syntax-check: FAIL - {len(report.errors)} syntax error(s) in "
            f"{files_with_errors} of {len(report.checked)} file(s)"
        )
    lines = [head, f"languages: {wanted}", ""]
    for name, language in report.checked.items():
        count = sum(1 for e in report.errors if e.file == name)
        verdict = "ok" if count == 0 else f"{count} error(s)"
        lines.append(f"  {printable(name)} ({language}): {verdict}")
    for error in report.errors:
        where = f"{printable(error.file)}:{error.line}:{error.column}"
        lines += ["", f"{where}: syntax error: {printable(error.message)}", *caret_block(error)]
    return "\n".join(lines) + "\n"


def checkers_suffixes(languages: list[str]) -> list[str]:
    suffixes: list[str] = []
    for language in languages:
        if language == "gherkin":
            suffixes += GHERKIN_SUFFIXES
        else:
            for grammar in [language, "tsx"] if language == "typescript" else [language]:
                suffixes += TREE_SITTER[grammar][0]
    return suffixes


def chosen_languages(setting: str | None) -> list[str]:
    names = (setting or " ".join(LANGUAGES)).lower().split()
    unknown = [name for name in names if name not in LANGUAGES]
    if unknown or not names:
        raise ValueError(
            f"LANGUAGES={setting!r}: unknown {' '.join(unknown) or '(empty)'}; "
            f"known: {' '.join(LANGUAGES)}"
        )
    return list(dict.fromkeys(names))


def main() -> int:
    try:
        languages = chosen_languages(os.environ.get("LANGUAGES"))
    except ValueError as exc:
        print(f"syntax-check cannot run: {exc}", file=sys.stderr)
        return 2
    root = Path(os.environ.get("TASK_DIR") or ".").resolve()
    report = check_tree(root, languages)
    text = render(report)
    results = root / RESULTS
    results.mkdir(exist_ok=True)
    (results / "syntax-report.txt").write_text(text, encoding="utf-8")
    summary = {
        "passed": report.passed,
        "languages": report.languages,
        "checked": report.checked,
        "errors": [asdict(error) for error in report.errors],
    }
    (results / "syntax.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(text)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
