"""The service under benchmark, run as users run it: ``modelbus serve`` in its own process.

The benchmarks' baselines (MLServer, an aiohttp server, a TCP receiver) run in processes of their
own; so does our service, with the benchmark's client in the benchmark's process.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bus import Entity, Grant

__all__ = ["ServiceUnderTest", "service_process"]

_START_TIMEOUT_S = 60.0


class ServiceUnderTest:
    def __init__(self, service_uri: str, owner_key: Path, pid: int = 0) -> None:
        self.service_uri = service_uri
        self.owner_key = owner_key
        self.pid = pid

    def user_with_grant(self) -> tuple[Entity, Grant]:
        """A fresh entity granted C*P on the whole service for an hour by its namespace owner."""
        owner, user = Entity.load(self.owner_key), Entity.generate()
        now = time.time_ns()
        grant = Grant.create(
            owner,
            user.public_key,
            f"{self.service_uri}/*",
            "C*P",
            ttl=0,
            expires_ns=now + 3600 * 10**9,
            created_ns=now,
        )
        return user, grant


@contextmanager
def service_process(
    bus_url: str,
    data_dir: Path,
    *,
    embedded_bus: bool = False,
    artifacts: str | None = None,
    namespace_key: Path | None = None,
    options: tuple[str, ...] = (),
) -> Iterator[ServiceUnderTest]:
    """Run ``modelbus serve`` on ``bus_url`` until the block ends (then SIGTERM, bounded).
    ``embedded_bus``: the service runs the ZeroMQ bus itself at ``bus_url`` (a free ``zmq://``
    address), as ``modelbus serve`` does by default, instead of joining a running one. The
    namespace key is made beside the data directory (unless given), never in the user's own
    config. ``artifacts``: the service's ``--artifacts`` store (a shared directory or S3
    bucket); ``options`` are more ``serve`` options (``--instance a``)."""
    namespace_key = namespace_key or data_dir.parent / f"{data_dir.name}.namespace.key"
    argv = [
        sys.executable,
        "-m",
        "proxy.cli",
        "--bus",
        bus_url,
        "serve",
        "--data-dir",
        str(data_dir),
        "--namespace-key",
        str(namespace_key),
        *(() if embedded_bus else ("--no-embedded-bus",)),
        *(() if artifacts is None else ("--artifacts", artifacts)),
        *options,
    ]
    log = data_dir.parent / f"{data_dir.name}.serve.log"
    with log.open("w") as errors:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, text=True)
    try:
        yield ServiceUnderTest(_service_uri(process, log), namespace_key, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _service_uri(process: subprocess.Popen[str], log: Path) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + _START_TIMEOUT_S
    for line in process.stdout:
        words = line.split()
        if words[:1] == ["service"]:
            return words[1]
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"modelbus serve did not start; its log says:\n{log.read_text()[-2000:]}")
