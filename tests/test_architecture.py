"""The architecture holds: layers (import-linter, configured in pyproject's [tool.importlinter])
and one owner module per third-party library (an AST scan, with the table below)."""

from __future__ import annotations

import ast
import fnmatch
import os
import shutil
import subprocess
import sysconfig
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Third-party library (top-level import name) -> the only modules that may import it, as
# repository-relative globs. Extend it here when a library or an owner is added.
OWNERS: dict[str, tuple[str, ...]] = {
    "msgpack": ("bus/codec.py",),
    "nacl": ("bus/entity.py",),
    "cloudpickle": ("bus/artifact.py",),
    "paho": ("transports/mqtt.py", "proxy/bench*.py"),  # bench: the raw-paho baseline
    "aiomqtt": ("transports/mqtt.py", "proxy/bench*.py"),
    "zmq": (
        "transports/zeromq.py",
        "proxy/channel.py",  # the worker channel (DESIGN §3): ZeroMQ sockets of backend/worker
        "proxy/backend.py",
        "proxy/worker.py",
        "proxy/bench*.py",
    ),
    "aiosqlite": ("proxy/registry.py",),
    "docker": ("proxy/runtime_docker.py",),
    "rdflib": ("chooser/places.py",),
}


def packages() -> list[str]:
    """Our packages, as pyproject lists them for setuptools (tests are free to import anything)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return list(config["tool"]["setuptools"]["packages"])


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


# Programs that compose the service with the client library (also ignored by import-linter).
DRIVERS_OF_THE_CLIENT = {
    "proxy/demo.py",
    "proxy/bench_predict.py",
    "proxy/bench_upload.py",
    "proxy/bench_image.py",
}


def test_proxy_reaches_container_manager_only_through_the_command_table() -> None:
    """``deploy`` lives in container_manager/cli.py; proxy/cli.py loads it by name, lazily.
    Only the demo and the benchmarks, which drive a service as a user would, import it."""
    offenders = [
        f"{file}:{line} imports {module}"
        for file, imports in imports_by_file().items()
        if file.startswith("proxy/") and file not in DRIVERS_OF_THE_CLIENT
        for module, line in imports
        if module.partition(".")[0] == "container_manager"
    ]
    assert not offenders, "\n".join(offenders)


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
