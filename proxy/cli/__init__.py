"""The ``modelbus`` command line (:mod:`proxy.cli.main`); ``python -m proxy.cli`` runs it."""

from proxy.cli.main import main

__all__ = ["main"]
