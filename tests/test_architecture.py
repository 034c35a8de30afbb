"""The shape of the package, checked from its source: the pure core stays pure, the scheduler
reaches execution only through its seam, and no module grows into a room that does everything."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mlmaster_daemon"
# Files may grow to about 400 lines; these few sit just above it (each one thing).
MAX_LINES = 450


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (lazy imports in functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_search_imports_nothing_of_the_package_but_models_and_errors() -> None:
    allowed = ("mlmaster_daemon.search", "mlmaster_daemon.models", "mlmaster_daemon.errors")
    wrong = {
        f"{path.name}: {module}"
        for path in (PACKAGE / "search").glob("*.py")
        for module in _imports(path)
        if module.startswith("mlmaster_daemon") and not module.startswith(allowed)
    }
    assert not wrong


def test_search_does_no_io_and_reads_no_clock() -> None:
    effects = {"asyncio", "aiosqlite", "sqlite3", "time", "os", "subprocess", "tiktoken",
               "pathlib", "psutil"}
    used = {
        f"{path.name}: {module}"
        for path in (PACKAGE / "search").glob("*.py")
        for module in _imports(path)
        if module.split(".")[0] in effects
    }
    assert not used


def test_the_scheduler_runs_scripts_only_through_the_executor_seam() -> None:
    backends = {"runner", "slots", "sandbox", "gpu", "cgroups", "limits", "launch", "processes"}
    reached = {
        f"{path.name}: {module}"
        for path in (PACKAGE / "scheduler").glob("*.py")
        for module in _imports(path)
        if module.startswith("mlmaster_daemon.execution.")
        and module.rsplit(".", 1)[1] in backends
    }
    assert not reached


def test_the_scheduler_never_loads_the_model_client() -> None:
    loaded = {
        f"{path.name}: {module}"
        for path in (PACKAGE / "scheduler").glob("*.py")
        for module in _imports(path)
        if module.startswith(("mlmaster_daemon.coders.llm", "mlmaster_daemon.coders.offline",
                              "openai"))
    }
    assert not loaded


def test_no_module_is_much_over_four_hundred_lines() -> None:
    long = {str(path.relative_to(PACKAGE)): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long


def test_the_scheduler_stays_a_package_of_small_files() -> None:
    long = {path.name: n for path in (PACKAGE / "scheduler").glob("*.py")
            if (n := len(path.read_text().splitlines())) > 300}
    assert not long
