"""Shared fixtures: every module in tests/fixtures/ is a pytest plugin (real parts on free ports)."""

from pathlib import Path

pytest_plugins = sorted(
    f"tests.fixtures.{path.stem}"
    for path in (Path(__file__).parent / "fixtures").glob("*.py")
    if path.stem != "__init__"
)
