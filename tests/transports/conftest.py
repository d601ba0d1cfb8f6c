"""Fixtures of the transport tests."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def ns() -> str:
    """A namespace no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"
