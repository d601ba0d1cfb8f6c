"""Fixtures for the dashboard's tests (helpers.py has the builders)."""

from __future__ import annotations

import os

import pytest

from tests.bus.helpers import Namespace
from tests.proxy.dashboard.helpers import CHROMIUM


@pytest.fixture
def namespace() -> Namespace:
    return Namespace()


@pytest.fixture
def chromium() -> str:
    """Debian's chromium; the test fails (never skips) without it: tests/run.sh installs it."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail("chromium is not installed: apt-get install -y chromium", pytrace=False)
    return CHROMIUM
