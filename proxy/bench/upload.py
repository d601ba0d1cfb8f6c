"""``modelbus bench upload``: chunked upload throughput next to raw loopback TCP, in one run.

Ours: a file of ``--mib`` MiB (random bytes) uploaded to a ``modelbus serve`` process with the
chunked transfer (1 MiB chunks as request attachments, window 16, every chunk signed and
verified, spooled to disk, the whole digest computed as chunks arrive and checked at commit)
over ZeroMQ and over MQTT (Mosquitto). Raw: the same bytes
sent with ``socket.sendall`` in 1 MiB pieces to a receiver in another process that writes them
to a file: the ceiling for moving bytes between two processes here.

With ``--artifacts LOCATION`` (repeatable: ``file:///shared/path``, ``s3://bucket/prefix`` with
the endpoint and keys in the AWS_* environment), the same upload again to a service whose
artifact store is there: chunks written to the store and recorded in the registry as they
arrive, the file assembled from them and verified at commit (what lets another proxy continue
an upload), next to the default (a local spool file). Each run gets a fresh sub-prefix of the
location, so no upload finds its artifact already held.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import click

from bus import BusClient, runner
from container_manager import ServiceClient
from proxy.bench.bus import free_port_block, own_buses
from proxy.bench.service import service_process
from transports import open_transport

__all__ = ["UploadRow", "print_upload_table", "run_upload_bench"]

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class UploadRow:
    label: str
    seconds: float
    megabytes: float

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds


def _make_file(path: Path, mib: int) -> None:
    with path.open("wb") as file:
        for _ in range(mib):
            file.write(os.urandom(MIB))


def _raw_tcp(path: Path, workdir: Path) -> float:
    """Seconds to move the file over loopback TCP into a file written by another process."""
    port = free_port_block(1)
    target = workdir / "raw-received"
    receiver = subprocess.Popen(
        [sys.executable, "-c", _RECEIVER, str(port), str(target)], stdout=subprocess.PIPE
    )
    try:
        assert receiver.stdout is not None
        receiver.stdout.readline()  # "ready"
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as sock, path.open("rb") as file:
            while chunk := file.read(MIB):
                sock.sendall(chunk)
        receiver.wait(120)
        return time.perf_counter() - started
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
        target.unlink(missing_ok=True)


_RECEIVER = """
import socket, sys
port, target = int(sys.argv[1]), sys.argv[2]
with socket.socket() as server:
    server.bind(("127.0.0.1", port)); server.listen(1)
    print("ready", flush=True)
    conn, _ = server.accept()
    with conn, open(target, "wb") as out:
        while data := conn.recv(1 << 20):
            out.write(data)
"""


async def _ours(
    bus_url: str, path: Path, workdir: Path, window: int, artifacts: str | None
) -> float:
    data_dir = Path(tempfile.mkdtemp(dir=workdir)) / "data"
    with service_process(bus_url, data_dir, artifacts=artifacts) as service:
        user, grant = service.user_with_grant()
        async with BusClient(open_transport(bus_url), user, proofs=[[grant]]) as bus:
            client = ServiceClient(bus, service.service_uri, timeout_s=120)
            started = time.perf_counter()
            await client.upload_artifact(path, name="bench", kind="image", window=window)
            return time.perf_counter() - started


def run_upload_bench(
    mib: int, window: int, stores: tuple[str, ...] = ()
) -> tuple[list[UploadRow], list[str]]:
    notes: list[str] = []
    rows: list[UploadRow] = []
    megabytes = mib * MIB / 1e6
    with tempfile.TemporaryDirectory(prefix="modelbus-upload-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        source = workdir / "artifact.bin"
        _make_file(source, mib)
        rows.append(
            UploadRow("raw loopback TCP (sendall → file)", _raw_tcp(source, workdir), megabytes)
        )
        for label, url in stack.enter_context(own_buses(notes)):
            for store in (None, *stores):
                fresh = None if store is None else f"{store.rstrip('/')}/{uuid.uuid4().hex}"
                seconds = runner.run(_ours, url, source, workdir, window, fresh)
                where = "" if store is None else f" → {store.partition('://')[0]}"
                rows.append(UploadRow(f"modelbus upload over {label}{where}", seconds, megabytes))
    return rows, notes


def print_upload_table(rows: list[UploadRow], notes: list[str], mib: int) -> None:
    raw = rows[0]
    click.echo(f"upload of {mib} MiB")
    click.echo(f"{'':44} {'seconds':>8} {'MB/s':>8} {'vs raw TCP':>11}")
    for row in rows:
        click.echo(
            f"{row.label:44} {row.seconds:8.2f} {row.mb_per_s:8.0f} "
            f"{row.mb_per_s / raw.mb_per_s:10.0%}"
        )
    for note in notes:
        click.echo(f"note: {note}")
