"""Frame-sized buffers come from their own mappings once the service fixed glibc's mmap
threshold: after a 16 MiB block was freed (which raises glibc's dynamic threshold to 16 MiB, so
a 2 MiB buffer would come from the heap and stay with the process when freed), a 2 MiB
allocation is still a mapping of its own. Observed through ``mallinfo2`` in a fresh process —
the control, without the call, shows the heap allocation.

Covers proxy/service/memory.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

PROBE = """
import ctypes, sys
from proxy.service.memory import return_big_buffers

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "fixed":
    assert return_big_buffers()
big = bytes(16 << 20)
del big
before = libc.mallinfo2().hblks
frame = bytes(2 << 20)
print(libc.mallinfo2().hblks - before)
"""


def mapped_blocks_for_a_frame(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    return int(done.stdout)


def test_a_frame_sized_buffer_is_mapped_after_a_bigger_one_was_freed() -> None:
    assert mapped_blocks_for_a_frame("default") == 0  # glibc's dynamic threshold: the heap
    assert mapped_blocks_for_a_frame("fixed") == 1
