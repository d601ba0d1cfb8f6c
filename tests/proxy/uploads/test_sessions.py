"""Chunked uploads and deploys through the service, and every way they go wrong: a corrupt chunk,
a wrong total digest, an oversize upload, too many open uploads, an idle upload, an unknown model
or artifact, a duplicate version, a deploy the backend cannot run — each a typed error, nothing
half-registered. Chunk bytes as the request's attachment or inline in the body, and an
attachment whose verified digest is not the body's ``sha256``. The whole file's digest computed
as the prefix advances (commit does not hash the file), chunks out of order included, and an
acknowledged chunk never overwritten. A file changed during its upload stops it with a conflict.
And resuming: from a prefix sent by hand; across a proxy
killed mid-upload and started again (its commit hashes the spool file: the running digest died
with the first process); inside ``upload_file`` when a frozen proxy lets a chunk time out. The
last two run the proxy as a separate process (``proxy_process.py``) on a ZeroMQ forwarder that
outlives it.

Chunks are sent by hand with ``ServiceClient.call`` (inline ``data``) or ``send_attached`` (the
wire operations of ``bus.transfer``) where a test needs to misbehave; otherwise through
``upload_file``.

Covers proxy/uploads/sessions.py, proxy/uploads/requests.py, proxy/uploads/digest.py and
proxy/uploads/spool.py.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

import proxy.service.startup
import proxy.uploads.sessions
from bus import Entity, PayloadObject
from bus.artifact import build_closure_archive
from bus.errors import (
    Conflict,
    DecodeError,
    InvalidRequest,
    LimitExceeded,
    NotFound,
    RequestTimeout,
)
from bus.transfer import UploadProgress, file_sha256, upload_file
from container_manager import ServiceClient
from tests.proxy.conftest import ProxyHarness, Service, wait_until

CHUNK = 4096
BIG_CHUNK = 256 * 1024
REPO_ROOT = Path(__file__).resolve().parents[3]
PROCESS_START_S = 30.0
PROCESS_STOP_S = 20.0
FALLBACK_LOG = "hashing the spool file to commit"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunks_of(data: bytes, size: int = CHUNK) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def begin(
    client: ServiceClient,
    data: bytes,
    *,
    name: str = "blob",
    announced: str | None = None,
    chunk_size: int = CHUNK,
) -> dict[str, Any]:
    return dict(
        await client.call(
            "deploy",
            "upload.begin",
            name=name,
            kind="closure",
            size=len(data),
            sha256=announced or sha(data),
            chunk_size=chunk_size,
        )
    )


async def send_chunk(
    client: ServiceClient, upload_id: str, index: int, data: bytes, *, digest: str | None = None
) -> int:
    reply = await client.call(
        "deploy",
        "upload.chunk",
        upload_id=upload_id,
        index=index,
        sha256=digest or sha(data),
        data=data,
    )
    return int(reply["next_index"])


async def send_attached(
    client: ServiceClient,
    upload_id: str,
    index: int,
    data: bytes,
    *,
    digest: str | None = None,
    inline: bytes | None = None,
) -> int:
    """A chunk as ``upload_file`` sends it: its bytes as the request's attachment."""
    body: dict[str, Any] = {
        "op": "upload.chunk",
        "upload_id": upload_id,
        "index": index,
        "sha256": digest or sha(data),
    }
    if inline is not None:
        body["data"] = inline
    reply = await client.bus.request(
        client.slot("deploy"), body, attachment=PayloadObject.binary(data), timeout_s=30
    )
    return int(reply["next_index"])


def no_file_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make commit fail if it hashed the spool file instead of using the running digest."""

    def refuse(path: Path) -> str:
        raise AssertionError(f"commit hashed {path}: the running digest was not used")

    monkeypatch.setattr(proxy.uploads.sessions, "file_sha256", refuse)


def summed(factor: float) -> Callable[[list[list[float]]], list[float]]:
    def predict(inputs: list[list[float]]) -> list[float]:
        return [sum(x) * factor for x in inputs]

    return predict


def spooled(service: Service) -> list[str]:
    return sorted(path.name for path in (service.data_dir / "spool").iterdir())


def artifacts(service: Service) -> list[str]:
    return sorted(path.name for path in (service.data_dir / "artifacts").iterdir())


async def test_a_corrupt_chunk_is_refused_and_not_acknowledged(
    memory_harness: ProxyHarness,
) -> None:
    data = os.urandom(3 * CHUNK + 100)
    parts = chunks_of(data)
    with anyio.fail_after(30):
        async with memory_harness.serving() as service:
            operator = service.operator
            opened = await begin(operator, data)
            upload_id = opened["upload_id"]
            assert (opened["next_index"], opened["chunk_count"]) == (0, 4)
            assert await send_chunk(operator, upload_id, 0, parts[0]) == 1

            with pytest.raises(InvalidRequest) as wrong_digest:
                await send_chunk(operator, upload_id, 1, parts[1], digest=sha(b"other"))
            assert wrong_digest.value.details["index"] == 1
            flipped = bytes([parts[1][0] ^ 0xFF]) + parts[1][1:]
            with pytest.raises(InvalidRequest):
                await send_chunk(operator, upload_id, 1, flipped, digest=sha(parts[1]))
            with pytest.raises(InvalidRequest):
                await send_chunk(operator, upload_id, 1, parts[1][:-1])  # short chunk
            with pytest.raises(InvalidRequest):
                await send_chunk(operator, upload_id, 4, parts[3])  # past the last chunk

            resumed = await begin(operator, data)
            assert (resumed["upload_id"], resumed["next_index"]) == (upload_id, 1)
            with pytest.raises(InvalidRequest) as early:
                await operator.call("deploy", "upload.commit", upload_id=upload_id)
            assert early.value.details["next_index"] == 1

            for index in (1, 2, 3):
                assert await send_chunk(operator, upload_id, index, parts[index]) == index + 1
            committed = await operator.call("deploy", "upload.commit", upload_id=upload_id)
            assert committed == {"artifact": sha(data), "size": len(data), "kind": "closure"}
            assert (service.data_dir / "artifacts" / sha(data)).read_bytes() == data
            assert spooled(service) == []


async def test_a_wrong_total_digest_discards_the_upload(memory_harness: ProxyHarness) -> None:
    data = os.urandom(2 * CHUNK)
    announced = sha(b"what the sender claimed")
    with anyio.fail_after(30):
        async with memory_harness.serving() as service:
            operator = service.operator
            opened = await begin(operator, data, announced=announced)
            for index, part in enumerate(chunks_of(data)):
                await send_chunk(operator, opened["upload_id"], index, part)

            with pytest.raises(InvalidRequest) as refused:
                await operator.call("deploy", "upload.commit", upload_id=opened["upload_id"])
            assert refused.value.details == {"expected": announced, "actual": sha(data)}

            assert artifacts(service) == [] and spooled(service) == []
            with pytest.raises(NotFound):
                await operator.call("deploy", "upload.commit", upload_id=opened["upload_id"])
            for digest in (announced, sha(data)):
                with pytest.raises(NotFound):
                    await operator.deploy_artifact("m", "1", "doubles", digest)
            assert await operator.get_all_models() == []
            again = await begin(operator, data, announced=announced)
            assert again["upload_id"] != opened["upload_id"] and again["next_index"] == 0


async def test_an_oversize_upload_is_refused(memory_harness: ProxyHarness, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(5000))
    with anyio.fail_after(30):
        async with memory_harness.serving(max_upload_bytes=4096) as service:
            operator = service.operator
            with pytest.raises(LimitExceeded) as refused:
                await operator.upload_artifact(big, name="big", kind="closure", chunk_size=1024)
            assert refused.value.details == {"size": 5000, "limit": 4096}
            assert spooled(service) == [] and artifacts(service) == []

            fits = os.urandom(4096)
            opened = await begin(operator, fits, chunk_size=1024)
            assert opened["chunk_count"] == 4


async def test_too_many_open_uploads_per_sender(memory_harness: ProxyHarness) -> None:
    blobs = [os.urandom(100) for _ in range(3)]
    with anyio.fail_after(30):
        async with memory_harness.serving(max_open_uploads_per_sender=2) as service:
            operator = service.operator
            first = await begin(operator, blobs[0], name="a")
            await begin(operator, blobs[1], name="b")
            with pytest.raises(LimitExceeded) as refused:
                await begin(operator, blobs[2], name="c")
            assert refused.value.details["limit"] == 2
            assert len(spooled(service)) == 2

            other = Entity.generate(comment="second operator")
            grant = memory_harness.grant(other, f"{memory_harness.service_uri}/*", "C*P")
            async with memory_harness.client(other, [[grant]]) as second:
                assert (await begin(second, blobs[2], name="c"))["next_index"] == 0

            await operator.call("deploy", "upload.abort", upload_id=first["upload_id"])
            assert (await begin(operator, blobs[2], name="c"))["next_index"] == 0


async def test_an_idle_upload_expires(
    memory_harness: ProxyHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy.service.startup, "UPLOAD_SWEEP_S", 0.1)
    data = os.urandom(2 * CHUNK)
    with anyio.fail_after(30):
        async with memory_harness.serving(upload_idle_timeout_s=1.0) as service:
            operator = service.operator
            opened = await begin(operator, data)
            upload_id = opened["upload_id"]
            assert spooled(service) == [upload_id]

            async def swept() -> bool:
                return spooled(service) == []

            await wait_until(swept, what="the idle upload's spool file removed")
            with pytest.raises(NotFound):
                await send_chunk(operator, upload_id, 0, data[:CHUNK])
            with pytest.raises(NotFound):
                await operator.call("deploy", "upload.commit", upload_id=upload_id)
            fresh = await begin(operator, data)
            assert fresh["upload_id"] != upload_id and fresh["next_index"] == 0


async def test_an_upload_resumes_from_the_acknowledged_prefix(
    memory_harness: ProxyHarness, tmp_path: Path
) -> None:
    data = os.urandom(10 * CHUNK)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    parts = chunks_of(data)
    seen: list[UploadProgress] = []
    with anyio.fail_after(30):
        async with memory_harness.serving() as service:
            operator = service.operator
            opened = await begin(operator, data, name="blob")
            for index in (0, 1, 2, 3, 4, 7):  # 7 arrives, but out of the contiguous prefix
                await send_chunk(operator, opened["upload_id"], index, parts[index])

            artifact = await operator.upload_artifact(
                path, name="blob", kind="closure", chunk_size=CHUNK, progress=seen.append
            )
            assert artifact == sha(data) == file_sha256(path)
            assert {p.resumed_from for p in seen} == {5}
            assert seen[-1].chunks_acked == 10 and seen[-1].acked_bytes == len(data)
            assert len(seen) == 5  # chunks 5 to 9: nothing before the prefix was sent again
            assert (service.data_dir / "artifacts" / artifact).read_bytes() == data

            again = await upload_file(
                operator.bus, operator.slot("deploy"), path, name="blob", kind="closure"
            )
            assert again == {
                "artifact": artifact,
                "size": len(data),
                "kind": "closure",
                "already_present": True,
            }


async def test_unknown_models_and_artifacts_are_not_found(memory_harness: ProxyHarness) -> None:
    with anyio.fail_after(30):
        async with memory_harness.serving() as service:
            operator = service.operator
            with pytest.raises(NotFound):
                await operator.predict(model="nope", input=[1.0])
            with pytest.raises(NotFound):
                await operator.predict(app="nope", input=[1.0])
            with pytest.raises(NotFound):
                await operator.deploy_artifact("m", "1", "doubles", sha(b"never uploaded"))
            with pytest.raises(NotFound):
                await operator.get_model_info("m", "1")

            # Uploaded bytes that are not a closure archive: refused before registering.
            not_an_archive = await begin(operator, b"junk!", name="junk")
            await send_chunk(operator, not_an_archive["upload_id"], 0, b"junk!")
            await operator.call("deploy", "upload.commit", upload_id=not_an_archive["upload_id"])
            with pytest.raises(InvalidRequest):  # one code for every archive problem
                await operator.deploy_artifact("m", "1", "doubles", sha(b"junk!"))
            assert await operator.get_all_models() == []


@pytest.mark.slow
async def test_a_duplicate_version_is_a_conflict_and_the_first_still_serves(
    memory_harness: ProxyHarness,
) -> None:
    with anyio.fail_after(60):
        async with memory_harness.serving() as service:
            operator = service.operator
            first = await operator.deploy_function("m", "1", summed(10), "doubles")
            await operator.wait_ready("m", "1")
            with pytest.raises(Conflict):
                await operator.deploy_function("m", "1", summed(99), "doubles")
            assert await operator.get_all_models() == ["m:1"]
            info = await operator.get_model_info("m", "1")
            assert info["container_name"] == first["container_name"]
            assert (info["is_current_version"], info["is_serving"]) == (True, True)
            assert len(await operator.get_replicas("m", "1")) == 1
            reply = await operator.predict(model="m", input=[1.0, 2.0])
            assert (reply["version"], reply["output"]) == ("1", 30.0)


async def test_refused_deploys_register_nothing(memory_harness: ProxyHarness) -> None:
    archive = build_closure_archive(summed(1))
    junk = b"not a docker image tarball"
    tampered = _tampered(archive)
    with anyio.fail_after(30):
        async with memory_harness.serving() as service:
            operator = service.operator
            for data in (archive, junk, tampered):
                opened = await begin(operator, data)
                await send_chunk(operator, opened["upload_id"], 0, data)
                await operator.call("deploy", "upload.commit", upload_id=opened["upload_id"])

            refusals: list[tuple[type[Exception], dict[str, Any]]] = [
                (DecodeError, {"artifact": sha(junk), "kind": "image", "image": "m:1"}),
                (InvalidRequest, {"artifact": sha(archive), "kind": "image"}),  # no image named
                (InvalidRequest, {"artifact": sha(archive), "batch_size": 0}),
                (InvalidRequest, {"artifact": sha(archive), "batch_size": 1_000_000}),
                (InvalidRequest, {"artifact": sha(archive), "replicas": 1_000}),
                (InvalidRequest, {"artifact": sha(archive), "input_type": "tensors"}),
                (InvalidRequest, {"artifact": sha(tampered)}),  # closure.pkl not its digest's
            ]
            for error, fields in refusals:
                request = {"input_type": "doubles"} | fields
                with pytest.raises(error):
                    await operator.deploy_artifact(
                        "m", "1", request.pop("input_type"), request.pop("artifact"), **request
                    )
                assert await operator.get_all_models() == [], fields
            assert (await operator.status())["models"] == []


def _tampered(archive: bytes) -> bytes:
    """``archive`` with other bytes in closure.pkl than its manifest's digest names (checked
    before the deploy registers anything: the proxy never unpickles)."""
    source = zipfile.ZipFile(io.BytesIO(archive))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info, data + b"." if info.filename == "closure.pkl" else data)
    return out.getvalue()


@asynccontextmanager
async def proxy_process(harness: ProxyHarness, log_path: Path) -> AsyncIterator[Process]:
    """The proxy of ``harness`` as a separate process (tests/proxy/proxy_process.py), ready to
    serve; stopped with SIGTERM on exit unless the test killed it."""
    command = [
        sys.executable, "-m", "tests.proxy.proxy_process",
        "--bus-url", harness.bus_url, "--data-dir", str(harness.data_dir),
    ]  # fmt: skip
    with log_path.open("ab") as log:
        process = await anyio.open_process(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, cwd=REPO_ROOT
        )
    try:
        assert process.stdout is not None
        with anyio.fail_after(PROCESS_START_S):
            line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 4096)
        assert line.decode() == f"ready {harness.service_uri}", log_path.read_text()
        yield process
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.terminate()
                with anyio.move_on_after(PROCESS_STOP_S):
                    await process.wait()
            if process.returncode is None:
                process.kill()
            await process.aclose()


@pytest.mark.slow
async def test_an_upload_resumes_after_the_proxy_is_killed(
    zmq_harness: ProxyHarness, tmp_path: Path
) -> None:
    harness = zmq_harness
    ballast = os.urandom(3 * 1024 * 1024)  # makes the archive a dozen chunks, incompressible

    def heavy(inputs: list[list[float]]) -> list[float]:
        return [sum(x) + len(ballast) for x in inputs]

    archive = tmp_path / "heavy.closure"
    archive.write_bytes(build_closure_archive(heavy))
    digest = file_sha256(archive)
    chunk_count = -(-archive.stat().st_size // BIG_CHUNK)
    assert chunk_count > 8
    log_path = tmp_path / "proxy.log"
    killed_at: list[int] = []

    with anyio.fail_after(90):
        async with harness.client(harness.operator, [[harness.operator_grant()]]) as operator:
            async with proxy_process(harness, log_path) as first:

                def kill_midway(progress: UploadProgress) -> None:
                    if progress.chunks_acked == 4 and not killed_at:
                        os.kill(first.pid, signal.SIGKILL)
                        killed_at.append(progress.chunks_acked)

                with pytest.raises(RequestTimeout):
                    await upload_file(
                        operator.bus, operator.slot("deploy"), archive,
                        name="heavy", kind="closure", chunk_size=BIG_CHUNK, window=1,
                        timeout_s=2.0, retries=0, progress=kill_midway,
                    )  # fmt: skip
                assert await first.wait() == -signal.SIGKILL
            assert killed_at == [4]
            assert not (harness.data_dir / "artifacts" / digest).exists()

            async with proxy_process(harness, log_path):
                seen: list[UploadProgress] = []
                artifact = await operator.upload_artifact(
                    archive, name="heavy", kind="closure", chunk_size=BIG_CHUNK,
                    progress=seen.append,
                )  # fmt: skip
                assert artifact == digest
                assert seen and {p.resumed_from for p in seen} == {4}
                assert len(seen) == chunk_count - 4
                assert file_sha256(harness.data_dir / "artifacts" / digest) == digest
                assert log_path.read_text().count(FALLBACK_LOG) == 1  # the running digest died

                deployed = await operator.deploy_artifact("heavy", "1", "doubles", artifact)
                assert deployed["container_name"] == f"closure@sha256:{digest}"
                await operator.wait_ready("heavy", "1")
                reply = await operator.predict(model="heavy", input=[1.0, 2.0])
                assert reply["output"] == 3.0 + len(ballast)


class _OnRetry(logging.Handler):
    """Calls ``action`` when upload_file logs that it resumes an interrupted upload."""

    def __init__(self, action: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self.action = action
        self.retries = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "interrupted" in record.getMessage():
            self.retries += 1
            self.action()


@pytest.mark.slow
async def test_upload_file_resumes_by_itself_after_a_chunk_times_out(
    zmq_harness: ProxyHarness, tmp_path: Path
) -> None:
    """The proxy freezes (SIGSTOP) after four chunks: the next chunk times out, upload_file
    resumes from the acknowledged prefix — the proxy thawed (SIGCONT) once the retry starts."""
    harness = zmq_harness
    data = os.urandom(12 * BIG_CHUNK)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    seen: list[UploadProgress] = []
    transfer_log = logging.getLogger("bus.transfer")

    with anyio.fail_after(60):
        async with (
            harness.client(harness.operator, [[harness.operator_grant()]]) as operator,
            proxy_process(harness, tmp_path / "proxy.log") as process,
        ):

            def freeze_midway(progress: UploadProgress) -> None:
                seen.append(progress)
                if progress.chunks_acked == 4 and progress.resumed_from == 0:
                    process.send_signal(signal.SIGSTOP)

            on_retry = _OnRetry(lambda: process.send_signal(signal.SIGCONT))
            transfer_log.addHandler(on_retry)
            try:
                committed = await upload_file(
                    operator.bus, operator.slot("deploy"), path,
                    name="blob", kind="image", chunk_size=BIG_CHUNK, window=1,
                    timeout_s=2.0, retries=2, progress=freeze_midway,
                )  # fmt: skip
            finally:
                transfer_log.removeHandler(on_retry)
                process.send_signal(signal.SIGCONT)

    assert on_retry.retries == 1
    assert committed == {"artifact": sha(data), "size": len(data), "kind": "image"}
    assert FALLBACK_LOG not in (tmp_path / "proxy.log").read_text()  # resumed, same process
    assert (harness.data_dir / "artifacts" / sha(data)).read_bytes() == data
    resumed = sorted({p.resumed_from for p in seen})
    assert resumed[0] == 0 and len(resumed) == 2 and resumed[1] >= 4
    assert seen[-1].chunks_acked == 12


async def test_chunk_bytes_travel_attached_or_inline(
    memory_harness: ProxyHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Detached attachments (over 64 KiB: the envelope verified their digest), a small inline
    attachment (hashed by the service) and inline ``data`` mix in one upload."""
    no_file_hashing(monkeypatch)
    data = os.urandom(3 * BIG_CHUNK + 1000)
    parts = chunks_of(data, BIG_CHUNK)
    with anyio.fail_after(30):
        async with memory_harness.serving() as service:
            operator = service.operator
            opened = await begin(operator, data, chunk_size=BIG_CHUNK)
            upload_id = opened["upload_id"]
            assert await send_attached(operator, upload_id, 0, parts[0]) == 1
            assert await send_chunk(operator, upload_id, 1, parts[1]) == 2
            assert await send_attached(operator, upload_id, 2, parts[2]) == 3
            assert await send_attached(operator, upload_id, 3, parts[3]) == 4  # 1000 B: inline
            committed = await operator.call("deploy", "upload.commit", upload_id=upload_id)
            assert committed["artifact"] == sha(data)
            assert (service.data_dir / "artifacts" / sha(data)).read_bytes() == data


async def test_an_attachment_not_matching_the_body_digest_is_refused_unwritten(
    memory_harness: ProxyHarness,
) -> None:
    """The envelope verified the attachment's bytes against its signed digest, but the body names
    another SHA-256: invalid_request, nothing written, nothing acknowledged. Bytes both attached
    and inline, or neither, and an attachment on an operation that takes none, are refused too."""
    data = os.urandom(2 * BIG_CHUNK)
    parts = chunks_of(data, BIG_CHUNK)
    with anyio.fail_after(30):
        async with memory_harness.serving() as service:
            operator = service.operator
            opened = await begin(operator, data, chunk_size=BIG_CHUNK)
            upload_id = opened["upload_id"]
            spool = service.data_dir / "spool" / upload_id
            for small in (False, True):
                attached = parts[0][:4096] if small else parts[0]
                with pytest.raises(InvalidRequest) as mismatch:
                    await send_attached(operator, upload_id, 0, attached, digest=sha(parts[1]))
                if not small:
                    assert mismatch.value.details == {"index": 0}
            assert spool.read_bytes() == bytes(len(data))  # sparse: never written
            with pytest.raises(InvalidRequest, match="exactly one"):
                await send_attached(operator, upload_id, 0, parts[0], inline=parts[0])
            with pytest.raises(InvalidRequest, match="exactly one"):
                await operator.call(
                    "deploy", "upload.chunk", upload_id=upload_id, index=0, sha256=sha(parts[0])
                )
            with pytest.raises(InvalidRequest, match="takes no attachment"):
                await operator.bus.request(
                    operator.slot("deploy"),
                    {"op": "upload.commit", "upload_id": upload_id},
                    attachment=PayloadObject.binary(b"stray"),
                )
            assert (await begin(operator, data, chunk_size=BIG_CHUNK))["next_index"] == 0
            assert await send_attached(operator, upload_id, 0, parts[0]) == 1
            assert await send_attached(operator, upload_id, 1, parts[1]) == 2
            await operator.call("deploy", "upload.commit", upload_id=upload_id)
            assert (service.data_dir / "artifacts" / sha(data)).read_bytes() == data


async def test_the_running_digest_follows_chunks_out_of_order(
    memory_harness: ProxyHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks ahead of the prefix are held (within the window of 16) or read back from the spool
    file (beyond it) when the prefix reaches them; commit needs no pass over the file. An
    acknowledged chunk sent again with other bytes (and their own digest) is not written: the
    artifact is what the digest says."""
    no_file_hashing(monkeypatch)
    data = os.urandom(24 * CHUNK + 7)
    parts = chunks_of(data)
    order = [2, 1, 20, 0, *range(3, 20), *range(21, 25)]
    with anyio.fail_after(30):
        async with memory_harness.serving() as service:
            operator = service.operator
            opened = await begin(operator, data)
            upload_id = opened["upload_id"]
            assert opened["window"] == 16 and opened["chunk_count"] == len(parts) == 25
            acknowledged = [
                await send_attached(operator, upload_id, index, parts[index]) for index in order
            ]
            assert acknowledged[:4] == [0, 0, 0, 3] and acknowledged[-1] == 25
            other = os.urandom(CHUNK)
            assert await send_attached(operator, upload_id, 0, other) == 25
            committed = await operator.call("deploy", "upload.commit", upload_id=upload_id)
            assert committed["artifact"] == sha(data)
            assert (service.data_dir / "artifacts" / sha(data)).read_bytes() == data


async def test_a_file_changed_during_its_upload_stops_it_with_a_conflict(
    memory_harness: ProxyHarness, tmp_path: Path
) -> None:
    """Chunks are hashed before ``begin``: once the file changes, its chunks no longer match the
    digests sealed with them, the service rejects them unanswered, and the sender, seeing the
    file's size or mtime changed, stops with a conflict instead of resuming."""
    data = os.urandom(4 * BIG_CHUNK)
    path = tmp_path / "moving.bin"
    path.write_bytes(data)

    def change_after_first(progress: UploadProgress) -> None:
        if progress.chunks_acked == 1:
            path.write_bytes(os.urandom(len(data)))
            os.utime(path, ns=(1, 1))  # a different mtime, however coarse the clock

    with anyio.fail_after(30):
        async with memory_harness.serving() as service:
            operator = service.operator
            with pytest.raises(Conflict, match="changed while it was being uploaded"):
                await upload_file(
                    operator.bus, operator.slot("deploy"), path, name="moving", kind="closure",
                    chunk_size=BIG_CHUNK, window=1, timeout_s=1.0, progress=change_after_first,
                )  # fmt: skip
            assert artifacts(service) == []
