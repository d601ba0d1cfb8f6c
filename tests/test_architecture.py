"""The architecture holds: layers (import-linter, configured in pyproject's [tool.importlinter])
and one owner module per third-party library (an AST scan, with the table below)."""

from __future__ import annotations

import ast
import fnmatch
import os
import shutil
import statistics
import subprocess
import sysconfig
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Third-party library (top-level import name) -> the only modules that may import it, as
# repository-relative globs. Extend it here when a library or an owner is added. The benchmarks'
# raw baselines own their library imports here, in one place each (proxy/bench/raw.py,
# proxy/bench/http.py): a baseline must not go through our code.
OWNERS: dict[str, tuple[str, ...]] = {
    "msgpack": ("bus/codec.py",),
    "nacl": ("bus/entity.py",),
    "cloudpickle": ("bus/artifact.py",),
    "paho": ("transports/mqtt/*.py", "proxy/bench/raw.py"),
    "zmq": (
        "transports/zeromq/*.py",
        "proxy/backend/channel.py",  # the worker channel (DESIGN §3): backend <-> worker sockets
        "proxy/bench/raw.py",
    ),
    "aiosqlite": ("proxy/registry/registry.py",),
    "asyncpg": ("proxy/registry/postgres.py",),
    "boto3": ("proxy/uploads/s3.py",),
    "botocore": ("proxy/uploads/s3.py",),
    "docker": ("proxy/backend/docker_engine.py",),
    "aiohttp": (  # the HTTP servers and clients: the dashboard's, /metrics, the V2 backend's, the
        # benchmarks' baseline
        "proxy/dashboard/app.py",
        "proxy/metrics/recording.py",
        "proxy/backend/remote_v2.py",
        "proxy/bench/http.py",
    ),
    "prometheus_client": ("proxy/metrics/recording.py", "proxy/dashboard/app.py"),
    "rdflib": ("chooser/places.py",),
}
TOP_PACKAGES = ("bus", "transports", "proxy", "container_manager", "chooser")
MAX_MODULE_LINES = 500
MAX_MEDIAN_MODULE_LINES = 250
MAX_MODULES_PER_FOLDER = 20


def packages() -> list[str]:
    """Our top-level packages, as pyproject lists them for setuptools (tests import anything)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found = config["tool"]["setuptools"]["packages"]["find"]["include"]
    return [pattern.rstrip("*") for pattern in found]


def imported_modules(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """Every absolute module a file imports, at any depth (lazy imports count), including
    ``importlib.import_module("x")`` and ``__import__("x")`` with a literal name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, node.lineno
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield first.value, node.lineno


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def source_files() -> list[Path]:
    files = [path for package in packages() for path in sorted((ROOT / package).rglob("*.py"))]
    assert files, "no source files found: is ROOT right?"
    return files


def imports_by_file() -> dict[str, list[tuple[str, int]]]:
    return {
        path.relative_to(ROOT).as_posix(): list(
            imported_modules(ast.parse(path.read_text(), str(path)))
        )
        for path in source_files()
    }


def test_each_third_party_library_is_imported_only_by_its_owners() -> None:
    violations = [
        f"{file}:{line} imports {module} (owners: {', '.join(OWNERS[top])})"
        for file, imports in imports_by_file().items()
        for module, line in imports
        if (top := module.partition(".")[0]) in OWNERS
        and not any(fnmatch.fnmatch(file, owner) for owner in OWNERS[top])
    ]
    assert not violations, "\n".join(violations)


def test_the_scan_sees_the_owners_imports() -> None:
    """Guards the scan itself: the owners that exist must be found importing their library."""
    found = imports_by_file()
    assert "msgpack" in [module for module, _ in found["bus/codec.py"]]
    assert any(module.startswith("nacl.") for module, _ in found["bus/entity.py"])
    lazy = "def f():\n    import zmq.asyncio\n    importlib.import_module('docker')\n"
    assert [name for name, _ in imported_modules(ast.parse(lazy))] == ["zmq.asyncio", "docker"]


def test_the_packages_are_the_ones_the_customer_fixed() -> None:
    assert tuple(packages()) == TOP_PACKAGES


def test_every_owner_in_the_table_exists_and_imports_its_library() -> None:
    """No stale owner: each glob matches a file, and some matching file imports the library."""
    found = imports_by_file()
    stale = []
    for library, owners in OWNERS.items():
        for owner in owners:
            matching = [file for file in found if fnmatch.fnmatch(file, owner)]
            if not any(
                module.partition(".")[0] == library for f in matching for module, _ in found[f]
            ):
                stale.append(f"{owner} ({library})")
    assert not stale, "owners that do not import their library: " + ", ".join(stale)


def test_only_the_command_and_the_benchmarks_drive_the_client_library() -> None:
    offenders = [
        f"{file}:{line} imports {module}"
        for file, imports in imports_by_file().items()
        if file.startswith("proxy/") and not file.startswith(("proxy/cli/", "proxy/bench/"))
        for module, line in imports
        if module.partition(".")[0] == "container_manager"
    ]
    assert not offenders, "\n".join(offenders)


def test_modules_stay_small_and_folders_readable() -> None:
    sizes = {
        path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines())
        for path in source_files()
        if path.name != "__init__.py"
    }
    too_big = {file: lines for file, lines in sizes.items() if lines > MAX_MODULE_LINES}
    assert not too_big, f"modules over {MAX_MODULE_LINES} lines: {too_big}"
    assert statistics.median(sizes.values()) < MAX_MEDIAN_MODULE_LINES
    folders = Counter(str(Path(file).parent) for file in sizes)
    crowded = {folder: count for folder, count in folders.items() if count > MAX_MODULES_PER_FOLDER}
    assert not crowded, f"folders over {MAX_MODULES_PER_FOLDER} modules: {crowded}"


def test_every_module_has_its_test_or_is_named_by_one() -> None:
    """``pkg/a/b.py`` is tested by ``tests/pkg/a/test_b.py``, or some test names it (its path or
    dotted name) as a unit it covers."""
    tests_text = "\n".join(path.read_text() for path in (ROOT / "tests").rglob("*.py"))
    orphans = []
    for path in source_files():
        relative = path.relative_to(ROOT)
        if path.name in ("__init__.py", "__main__.py"):
            continue
        mirror = ROOT / "tests" / relative.parent / f"test_{path.name}"
        dotted = ".".join(relative.with_suffix("").parts)
        if (
            not mirror.exists()
            and relative.as_posix() not in tests_text
            and dotted not in tests_text
        ):
            orphans.append(relative.as_posix())
    assert not orphans, "modules no test names: " + ", ".join(orphans)


def _lint_imports() -> str:
    beside_python = Path(sysconfig.get_path("scripts")) / "lint-imports"
    found = str(beside_python) if beside_python.exists() else shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports is not installed: python3 -m pip install -e '.[test]'")
    return found


def test_import_linter_contracts_are_kept() -> None:
    result = subprocess.run(
        [_lint_imports(), "--no-cache"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
