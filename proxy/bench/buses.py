"""Buses of the benchmarks' own: a ZeroMQ forwarder and a Mosquitto on free loopback ports."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from proxy.bench.bus_results import LOOPBACK, START_TIMEOUT_S

__all__ = ["check_bus_url", "free_port_block", "own_buses", "own_mosquitto"]

_MOSQUITTO_CONFIG = """\
listener {port} 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
max_queued_messages 200000
max_inflight_messages 100
message_size_limit 16777216
persistence false
log_dest file {log}
"""
_FORWARDER = (
    "import sys; from bus import runner; from transports.zeromq import Forwarder; "
    "runner.run(Forwarder(sys.argv[1]).serve_forever)"
)


# -- buses of our own ------------------------------------------------------------------------------


def free_port_block(count: int) -> int:
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        with contextlib.ExitStack() as stack:
            try:
                for offset in range(count):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", base + offset))
            except OSError:
                continue
            return base
    raise RuntimeError(f"no {count} consecutive free ports on 127.0.0.1")


@contextlib.contextmanager
def _process(argv: list[str], port: int, what: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` (output to ``log``: an unread pipe blocks a server) until the block ends."""
    with log.open("wb") as output:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=output)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _accepts(port):
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited with {process.returncode}: see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port}")
            time.sleep(0.02)  # another process's listening socket cannot be awaited
        yield process
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def own_buses(notes: list[str]) -> Iterator[list[tuple[str, str]]]:
    """``[(label, url)]``: a ZeroMQ forwarder in a child process and, if installed, a Mosquitto
    (``set_tcp_nodelay``, raised queues), on free loopback ports, until the block ends. A missing
    mosquitto is said in ``notes``. The other benchmarks start their buses here too."""
    with (
        tempfile.TemporaryDirectory(prefix="modelbus-bench-") as name,
        contextlib.ExitStack() as stack,
    ):
        directory = Path(name)
        base = free_port_block(3)
        url = f"zmq://127.0.0.1:{base}"
        argv = [sys.executable, "-c", _FORWARDER, url]
        stack.enter_context(_process(argv, base + 2, "the forwarder", directory / "forwarder.log"))
        buses = [("ZeroMQ forwarder", url)]
        try:
            mqtt_url, _ = stack.enter_context(own_mosquitto(directory))
        except FileNotFoundError as missing:
            notes.append(f"MQTT NOT MEASURED: {missing}")
        else:
            buses.append(("Mosquitto", mqtt_url))
        yield buses


@contextlib.contextmanager
def own_mosquitto(directory: Path) -> Iterator[tuple[str, int]]:
    """``(url, pid)`` of a Mosquitto (``set_tcp_nodelay``, raised queues) on a free loopback
    port, its config and log in ``directory``, until the block ends; FileNotFoundError when
    the binary is missing."""
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
    if binary is None:
        raise FileNotFoundError("the mosquitto binary is missing (apt-get install mosquitto)")
    port = free_port_block(1)
    log, config = directory / "mosquitto.log", directory / "mosquitto.conf"
    config.write_text(_MOSQUITTO_CONFIG.format(port=port, log=log))
    with _process([binary, "-c", str(config)], port, "mosquitto", log) as process:
        yield f"mqtt://127.0.0.1:{port}", process.pid


def check_bus_url(url: str) -> str:
    """A label for a bus the user named; ValueError unless it is zmq:// or mqtt:// on loopback."""
    parts = urlsplit(url)
    if parts.scheme not in ("zmq", "mqtt"):
        raise ValueError(f"{url}: the bench measures zmq:// and mqtt:// buses")
    host = parts.hostname or ""
    if host not in LOOPBACK and not host.startswith("127."):
        raise ValueError(f"{url}: the bench only measures buses on loopback addresses")
    return "ZeroMQ forwarder" if parts.scheme == "zmq" else "MQTT broker"
