"""Shared fixtures: every module in tests/fixtures/ is a pytest plugin (real parts on free ports).

Fixture modules must not import each other at import time (pytest would rewrite their asserts
after import and warn, which fails the run): import a sibling lazily, inside the fixture.
"""

from pathlib import Path

pytest_plugins = sorted(
    f"tests.fixtures.{path.stem}"
    for path in (Path(__file__).parent / "fixtures").glob("*.py")
    if path.stem != "__init__"
)
