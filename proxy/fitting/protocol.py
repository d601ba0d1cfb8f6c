"""What the fit worker and the service that runs it agree on (:mod:`proxy.fitting.worker`).

Kept apart from both, so that ``python -m proxy.fitting.worker`` is not imported twice (once by
the package, once as ``__main__``).
"""

from __future__ import annotations

__all__ = ["MAX_INPUT_BYTES", "PROGRESS_PREFIX"]

PROGRESS_PREFIX = "modelbus-progress: "
"""A line of the worker's stderr starting so is its progress (the rest of the line)."""
MAX_INPUT_BYTES = 1024 * 1024 * 1024
"""The largest job input (training data) a worker reads."""
