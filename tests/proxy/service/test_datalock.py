"""One service per data directory: the lock refuses a second holder, names the first, and goes
with its process however it ends (a real process, SIGKILLed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bus import Conflict
from proxy.service.datalock import LOCK_FILE, lock_data_dir

HOLD = """
import sys, time
from pathlib import Path
from proxy.service.datalock import lock_data_dir
with lock_data_dir(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_second_holder_is_refused_until_the_first_lets_go(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with lock_data_dir(data) as path:
        assert path == data / LOCK_FILE
        assert path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(Conflict) as refused, lock_data_dir(data):
            pass
        assert refused.value.message == (
            f"the data directory {data} is in use by another modelbus service "
            f"(pid {os.getpid()}); stop it, or give this one its own --data-dir"
        )
    with lock_data_dir(data):  # released on exit
        pass


def test_the_lock_goes_with_a_killed_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(data)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(Conflict, match=f"pid {holder.pid}"), lock_data_dir(data):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert (data / LOCK_FILE).exists()  # the file stays; the lock does not
        with lock_data_dir(data):
            pass
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
