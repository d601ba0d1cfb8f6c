"""Big buffers given back to the system when freed: the service's memory after a flood.

Measured (issue 11, item 6): three identical floods of 15 MiB frames on a service's slots left
its RSS at 47 → 257 → 242 → 287 MB, yet no large buffer was alive afterwards and
``malloc_trim(0)`` brought it back to 136 MB each time — allocator high-water, not retention.
The cause is glibc's *dynamic* mmap threshold: a freed mmapped block above the threshold raises
it (up to 32 MiB), so later frame-sized buffers come from the heap, and freed heap memory stays
with the process. Fixing the threshold at 1 MiB keeps frame-sized buffers in their own mappings,
returned whole when freed: the same floods then leave 92-137 MB.

:func:`return_big_buffers` sets that once per process (the service calls it at start); on a C
library without glibc's ``mallopt`` it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["MMAP_THRESHOLD_BYTES", "return_big_buffers"]

logger = logging.getLogger(__name__)

MMAP_THRESHOLD_BYTES = 1024 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def return_big_buffers(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Serve allocations of ``threshold_bytes`` and more from their own mappings (given back
    when freed), fixing glibc's threshold; whether it was set."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes))
    if not done:
        logger.debug("mallopt(M_MMAP_THRESHOLD) refused; big buffers may stay with the process")
    return done
