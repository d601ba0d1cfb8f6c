"""A full disk, for real: the service's data directory on a 16 MiB tmpfs mounted for the test.

An upload the disk has no room for (beyond the reserve kept for the registry) is refused at
``upload.begin`` with ``limit_exceeded`` naming the free space and the reserve, and leaves no
spool file; an upload whose disk fills while it runs (another program wrote to it) is refused at
the next chunk and discarded at once — its spool file deleted, so the registry can write again;
a chunk that meets ENOSPC itself (no reserve) likewise; and a registry write on a full disk is a
typed ``limit_exceeded`` saying the disk is full, not an ``internal`` error. After each, with
room again, the service registers and uploads as before.

Covers proxy/registry/space.py and the disk checks of proxy/uploads/sessions.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.errors import LimitExceeded
from bus.transfer import upload_file
from container_manager import ServiceClient
from tests.proxy.conftest import ProxyHarness, Service
from tests.proxy.uploads.test_sessions import begin, send_chunk, sha

MIB = 1024 * 1024
DISK_BYTES = 16 * MIB
RESERVE = 4 * MIB
CHUNK = 256 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted under ``tmp_path`` (we run as root), unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount_point)],
        check=True,
    )
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=True)


@pytest.fixture
def harness(memory_harness: ProxyHarness, small_disk: Path) -> ProxyHarness:
    memory_harness.data_dir = small_disk / "proxy"
    return memory_harness


def fill(path: Path, size: int | None = None) -> int:
    """Write ``size`` bytes (None: until the disk is full) to ``path``; the bytes written."""
    written = 0
    block = b"\xa5" * (64 * 1024)
    with path.open("wb") as file:
        try:
            while size is None or written < size:
                piece = block if size is None else block[: size - written]
                file.write(piece)
                file.flush()
                written += len(piece)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return written


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def spool_files(service: Service) -> list[Path]:
    return sorted((service.data_dir / "spool").iterdir())


async def still_works(service: Service, name: str) -> None:
    """With room again: a registry write, and a whole upload, succeed."""
    await service.operator.register_application(name, "doubles", "0.0", 100_000)
    data = os.urandom(2 * CHUNK)
    sha256 = await send_whole(service.operator, data, name=name)
    assert (service.data_dir / "artifacts" / sha256).read_bytes() == data


async def send_whole(client: ServiceClient, data: bytes, *, name: str) -> str:
    """Upload ``data`` from a file off the small disk; its artifact's SHA-256."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "upload"
        path.write_bytes(data)
        committed = await upload_file(
            client.bus, client.slot("deploy"), path, name=name, kind="closure", chunk_size=CHUNK
        )
    assert committed["artifact"] == sha(data)
    return str(committed["artifact"])


async def test_an_upload_with_no_room_is_refused_at_begin(harness: ProxyHarness) -> None:
    async with harness.serving(disk_reserve_bytes=RESERVE) as service:
        free = free_bytes(service.data_dir)
        too_big = b"\0" * (free - RESERVE + CHUNK)
        with pytest.raises(LimitExceeded, match="kept for its registry") as refused:
            await begin(service.operator, too_big, chunk_size=CHUNK)
        details = refused.value.details
        assert details["reserve_bytes"] == RESERVE
        assert details["need_bytes"] == len(too_big)
        assert 0 < details["free_bytes"] <= free
        assert spool_files(service) == []

        # Two uploads that fit one at a time do not both fit: the first's unfilled spool counts.
        half = b"\1" * ((free - RESERVE) // 2 + CHUNK)
        opened = await begin(service.operator, half, chunk_size=CHUNK)
        assert opened["complete"] is False
        with pytest.raises(LimitExceeded, match="open uploads"):
            await begin(service.operator, half[:-1], chunk_size=CHUNK)
        assert len(spool_files(service)) == 1  # the first upload's spool file only
        await service.operator.call("deploy", "upload.abort", upload_id=opened["upload_id"])
        await still_works(service, "after-begin")


async def test_an_upload_whose_disk_fills_is_discarded_at_the_next_chunk(
    harness: ProxyHarness,
) -> None:
    async with harness.serving(disk_reserve_bytes=RESERVE) as service:
        data = os.urandom(4 * MIB)
        opened = await begin(service.operator, data, chunk_size=CHUNK)
        upload_id = opened["upload_id"]
        assert await send_chunk(service.operator, upload_id, 0, data[:CHUNK]) == 1
        filler = service.data_dir.parent / "filler"
        fill(filler, free_bytes(service.data_dir) - RESERVE)  # another program fills the disk

        with pytest.raises(LimitExceeded, match="was discarded") as refused:
            await send_chunk(service.operator, upload_id, 1, data[CHUNK : 2 * CHUNK])
        assert refused.value.details["discarded"] is True
        assert refused.value.details["reserve_bytes"] == RESERVE
        assert spool_files(service) == []  # deleted at once, not at the idle sweep
        with pytest.raises(Exception, match="no open upload"):
            await send_chunk(service.operator, upload_id, 1, data[CHUNK : 2 * CHUNK])
        filler.unlink()
        await still_works(service, "after-chunk")


async def test_a_chunk_that_meets_a_full_disk_discards_its_upload(harness: ProxyHarness) -> None:
    async with harness.serving(disk_reserve_bytes=0) as service:
        data = os.urandom(2 * MIB)
        opened = await begin(service.operator, data, chunk_size=CHUNK)
        filler = service.data_dir.parent / "filler"
        fill(filler, free_bytes(service.data_dir) - CHUNK // 2)  # less room than one chunk

        with pytest.raises(LimitExceeded, match=r"disk .* is full") as refused:
            await send_chunk(service.operator, opened["upload_id"], 0, data[:CHUNK])
        assert refused.value.details["discarded"] is True
        assert spool_files(service) == []
        filler.unlink()
        await still_works(service, "after-enospc")


async def test_a_registry_write_on_a_full_disk_is_a_typed_error(harness: ProxyHarness) -> None:
    async with harness.serving(disk_reserve_bytes=0) as service:
        filler = service.data_dir.parent / "filler"
        fill(filler)
        assert free_bytes(service.data_dir) < 4096
        with pytest.raises(LimitExceeded, match=r"registry .* full") as refused:
            # Enough rows to need new pages of the write-ahead log, whatever it holds.
            for index in range(200):
                await service.operator.register_application(
                    f"app-{index}", "doubles", "0.0", 100_000, description="x" * 2000
                )
        assert refused.value.details["path"].endswith("registry.sqlite3")
        with contextlib.suppress(FileNotFoundError):
            filler.unlink()
        await still_works(service, "after-full")
