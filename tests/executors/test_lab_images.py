"""The lab executors' images on their own: syntax-check (and its JavaScript/TypeScript-only
stage cypress-grammar) and web-e2e, run in the node's sandbox by testcontainers.

Each example's outcome is checked by test_images.py with every other executor's; here
the reports must say why, at the right place.
"""

from __future__ import annotations

import json
import shutil
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from tests.executors.test_images import example, line_of
from tests.support.executors import RunExecutor, load_settings
from tests.support.services import Engine

ALL_LANGUAGES = {"javascript", "typescript", "kotlin", "swift", "java", "python", "c", "gherkin"}
PNG = b"\x89PNG\r\n\x1a\n"


# -- syntax-check ---------------------------------------------------------------------


def test_syntax_check_parses_every_language_it_knows(run_executor: RunExecutor) -> None:
    run = run_executor("syntax-check", example("syntax-check", "pass-all-languages"))

    assert run.exit_code == 0, run.output
    report = json.loads(run.read("results/syntax.json"))
    assert report["passed"] is True
    assert set(report["checked"].values()) == ALL_LANGUAGES
    assert report["checked"]["src/Badge.tsx"] == "typescript"
    text = run.read("results/syntax-report.txt")
    assert text.startswith("syntax-check: PASS - 9 file(s) checked, no syntax errors")
    assert text in run.output


def test_syntax_check_points_at_each_error_with_a_caret(run_executor: RunExecutor) -> None:
    folder = example("syntax-check", "fail-syntax-errors")
    kotlin = line_of(folder / "app" / "Grades.kt", 'else -> "poor"')
    step = line_of(folder / "features" / "search.feature", "the result links")

    run = run_executor("syntax-check", folder)

    assert run.exit_code == 1
    text = run.read("results/syntax-report.txt")
    assert text.startswith("syntax-check: FAIL - 4 syntax error(s) in 3 of 4 file(s)")
    assert f"app/Grades.kt:{kotlin}:19: syntax error: missing '}}'" in text
    assert f'{kotlin:>5} |     else -> "poor"\n      |                   ^\n' in text
    assert "cypress/e2e/search.cy.js:5:5: syntax error: unexpected 'cy'" in text
    assert f"features/search.feature:{step}:5: syntax error: expected: #EOF" in text
    assert "app/Ok.kt (kotlin): ok" in text
    errors = json.loads(run.read("results/syntax.json"))["errors"]
    assert {(e["file"], e["line"]) for e in errors} >= {("app/Grades.kt", kotlin)}


def test_syntax_check_fails_when_there_is_nothing_to_check(run_executor: RunExecutor) -> None:
    run = run_executor("syntax-check", example("syntax-check", "fail-nothing-to-check"))

    assert run.exit_code == 1
    assert "syntax-check: FAIL - no file to check" in run.read("results/syntax-report.txt")


def test_syntax_check_reports_a_file_that_is_not_text(
    run_executor: RunExecutor, tmp_path: Path
) -> None:
    (tmp_path / "Main.java").write_bytes(b"class Main {}\n\xff\xfe\n")

    run = run_executor("syntax-check", tmp_path)

    assert run.exit_code == 1
    assert "Main.java:1:1: syntax error: not UTF-8 text" in run.output


def test_syntax_check_refuses_an_unknown_language(
    run_executor: RunExecutor, tmp_path: Path
) -> None:
    (tmp_path / "a.js").write_text("let a = 1;\n")

    run = run_executor("syntax-check", tmp_path, LANGUAGES="javascript cobol")

    assert run.exit_code == 2
    assert "unknown cobol" in run.output


def test_syntax_check_parses_deep_nesting_within_its_sandbox(
    run_executor: RunExecutor, tmp_path: Path
) -> None:
    depth = 100_000  # tree-sitter does not recurse: no stack to overflow
    (tmp_path / "deep.js").write_text("let x = " + "[" * depth + "]" * depth + ";\n")
    (tmp_path / "deep.py").write_text("x = " + "(" * depth + ")" * depth + "\n")

    run = run_executor("syntax-check", tmp_path)

    assert run.exit_code == 0, run.output
    assert "syntax-check: PASS - 2 file(s) checked" in run.read("results/syntax-report.txt")


def test_syntax_check_is_stopped_by_the_memory_limit_on_a_huge_file(
    run_executor: RunExecutor, tmp_path: Path
) -> None:
    line = 'const a{} = {{ b: [1, 2, 3], c: "text" }};\n'
    with (tmp_path / "huge.js").open("w") as huge:  # 45 MB: its syntax tree needs more than 256m
        huge.writelines(line.format(n) for n in range(1_000_000))

    run = run_executor("syntax-check", tmp_path)

    assert load_settings("syntax-check").settings.limits.memory == "256m"
    assert run.exit_code == 137, run.output  # SIGKILL by the kernel: a FAIL, the node says why
    assert not (run.task / "results" / "syntax.json").exists()


# -- cypress-grammar: the same image, JavaScript and TypeScript only -------------------


def test_cypress_grammar_checks_only_javascript_and_typescript(run_executor: RunExecutor) -> None:
    run = run_executor("cypress-grammar", example("cypress-grammar", "pass-cypress-specs"))

    assert run.exit_code == 0, run.output
    checked = json.loads(run.read("results/syntax.json"))["checked"]
    assert checked == {
        "cypress/e2e/todo.cy.js": "javascript",
        "cypress/support/commands.ts": "typescript",
    }  # android/Notes.kt does not parse, and is not this stage's business


def test_cypress_grammar_names_the_unclosed_block(run_executor: RunExecutor) -> None:
    run = run_executor("cypress-grammar", example("cypress-grammar", "fail-unclosed-block"))

    assert run.exit_code == 1
    assert (
        "cypress/e2e/cart.cy.js:1:1: syntax error: cannot parse from here to the end of the file"
        in run.output
    )


# -- web-e2e --------------------------------------------------------------------------

TODO_TESTS = {
    "test_start_page_shows_an_empty_list",
    "test_added_items_are_listed_in_order",
    "test_a_done_item_is_struck_and_not_counted",
}


def junit_failures(text: str) -> dict[str, str]:
    root = ET.fromstring(text)
    cases = {case.get("name", ""): case for case in root.iter("testcase")}
    assert set(cases) == TODO_TESTS
    return {
        name: (problem.get("message") or "")
        for name, case in cases.items()
        for problem in case
        if problem.tag in ("failure", "error")
    }


def test_web_e2e_passes_a_working_app_with_a_screenshot_per_test(
    run_executor: RunExecutor,
) -> None:
    run = run_executor("web-e2e", example("web-e2e", "pass-todo-app"))

    assert run.exit_code == 0, run.output
    assert junit_failures(run.read("results/junit.xml")) == {}
    summary = run.read("results/summary.txt")
    assert summary.startswith("web-e2e: PASS - 3 of 3 browser tests passed")
    assert "outside the container" not in summary  # the app's own requests are not listed
    shots = sorted((run.task / "results" / "screenshots").glob("*.png"))
    assert [shot.stem for shot in shots] == sorted(TODO_TESTS)
    assert all(shot.read_bytes().startswith(PNG) for shot in shots)


def test_web_e2e_names_the_failing_browser_test(run_executor: RunExecutor) -> None:
    run = run_executor("web-e2e", example("web-e2e", "fail-counter-bug"))

    assert run.exit_code == 1
    failures = junit_failures(run.read("results/junit.xml"))
    assert set(failures) == {"test_a_done_item_is_struck_and_not_counted"}
    summary = run.read("results/summary.txt")
    assert summary.startswith("web-e2e: FAIL - 2 of 3 browser tests passed")
    assert "test_a_done_item_is_struck_and_not_counted [failed]: AssertionError: 2 items left" in (
        summary
    )


def test_web_e2e_explains_a_missing_start_page(run_executor: RunExecutor) -> None:
    run = run_executor("web-e2e", example("web-e2e", "fail-no-index-page"))

    assert run.exit_code == 1
    summary = run.read("results/summary.txt")
    assert "web-e2e: FAIL - 0 of 3 browser tests passed" in summary
    assert (
        "Every test not passed has the same reason: index.html not found in the submission "
        "(HTML files there: todo.html)" in summary
    )


def test_web_e2e_fails_a_page_that_never_finishes_loading(
    run_executor: RunExecutor, tmp_path: Path
) -> None:
    (tmp_path / "index.html").write_text(
        "<!doctype html><title>Lab todo list</title><script>while (true) {}</script>\n"
    )

    run = run_executor("web-e2e", tmp_path, PAGE_LOAD_TIMEOUT="3")

    assert run.exit_code == 1, run.output
    assert "web-e2e: FAIL - 0 of 3 browser tests passed" in run.read("results/summary.txt")


# -- web-e2e's sandbox: the other executors' limits hold for the page's JavaScript ------


def test_web_e2e_keeps_the_sandbox_of_the_other_executors() -> None:
    limits = load_settings("web-e2e").settings.limits
    default = load_settings("python-check").settings.limits

    assert not limits.network
    assert (limits.user, limits.drop_capabilities, limits.no_new_privileges) == (
        default.user,
        True,
        True,
    )
    assert (limits.memory, limits.pids, limits.cpus) == ("1g", 256, default.cpus)


class CountingHandler(BaseHTTPRequestHandler):
    """Counts every request that reaches the host (none may, from the sandbox)."""

    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"[]")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def host_server() -> Iterator[tuple[int, list[str]]]:
    """An HTTP server on every address of the host: (its port, the paths asked for)."""
    hits: ClassVar[list[str]] = []
    handler = type("Handler", (CountingHandler,), {"hits": hits})
    server = ThreadingHTTPServer(("0.0.0.0", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_web_e2e_page_cannot_reach_outside_the_container(
    run_executor: RunExecutor,
    docker_engine: Engine,
    host_server: tuple[int, list[str]],
    tmp_path: Path,
) -> None:
    # The example's outside API becomes a server on the host, which a container with a
    # network reaches at the bridge's gateway: only the sandbox keeps the page from it.
    port, hits = host_server
    api = f"http://{docker_engine.bridge_gateway}:{port}"
    app = shutil.copytree(example("web-e2e", "fail-needs-the-network"), tmp_path / "app")
    page = app / "index.html"
    page.write_text(page.read_text().replace("https://todo-api.example.com", api))

    run = run_executor("web-e2e", app)

    assert run.exit_code == 1, run.output
    assert hits == []
    summary = run.read("results/summary.txt")
    assert "web-e2e: FAIL - 0 of 3 browser tests passed" in summary
    assert "The page asked for these outside the container; the sandbox has no network:" in summary
    assert f"  - {api}/items (net::ERR_" in summary
    assert "  - https://cdn.jsdelivr.net/npm/vue@3.4.21/dist/vue.global.prod.js (net::ERR_" in (
        summary
    )
    assert summary in run.output


@pytest.mark.parametrize("name", ["fail-fills-memory", "fail-spawns-workers"])
def test_web_e2e_a_page_that_fills_memory_or_spawns_workers_crashes_its_tab(
    run_executor: RunExecutor, name: str
) -> None:
    run = run_executor("web-e2e", example("web-e2e", name))

    assert run.exit_code == 1, run.output
    summary = run.read("results/summary.txt")
    assert "web-e2e: FAIL - 0 of 3 browser tests passed" in summary
    assert (
        "the page's browser tab crashed: it used more memory, processes or threads than the "
        "sandbox allows (chromedriver: tab crashed)" in summary
    )
