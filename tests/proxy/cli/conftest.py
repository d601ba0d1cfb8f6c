"""Fixtures of the CLI tests: ``modelbus deploy`` runs against the container manager's service."""

from tests.container_manager.conftest import service

__all__ = ["service"]
