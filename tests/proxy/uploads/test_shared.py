"""Uploads shared by several proxies: two instances of the upload machinery (each its own
:class:`Uploads`, data directory and registry connection) on one PostgreSQL registry
(tests/fixtures/postgres.py) and one artifact store — a shared directory, or a bucket on a real
S3 server (moto, tests/fixtures/s3.py). An upload begun through the first is resumed and finished
through the second; chunks received out of order and across both count; the artifact becomes
visible only once its whole digest is verified; bytes corrupted or cut short in the store are
refused at that check, the upload discarded and nothing made visible. And the same through the
whole service, on the wire: a closure upload begun through one proxy, the proxy stopped, then
resumed, committed, deployed and served through a second proxy with its own data directory.

Covers proxy/uploads/shared.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest

from bus.artifact import build_closure_archive
from bus.errors import InvalidRequest, NotFound
from container_manager import ServiceClient
from proxy.registry.registry import Registry
from proxy.uploads import BeginRequest, ChunkRequest, UploadLimits, UploadRef, Uploads
from proxy.uploads.store import ArtifactStore, open_store
from tests.proxy.conftest import ProxyHarness

pytestmark = pytest.mark.postgres

CHUNK = 64 * 1024
SENDER = "alice-key"


@pytest.fixture(params=["file", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('s3_bucket')}/artifacts"
    return f"file://{tmp_path}/shared"


@pytest.fixture
async def instances(
    location: str, postgres_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Uploads, Uploads]]:
    """Two upload services sharing the registry and the store, as two proxies would."""
    async with AsyncExitStack() as stack:
        pair = []
        for name in ("first", "second"):
            registry = await stack.enter_async_context(Registry.open(postgres_url))
            data_dir = tmp_path / name
            store = open_store(location, data_dir / "cache")
            pair.append(Uploads(registry, data_dir, UploadLimits(), store, shared=True))
        yield pair[0], pair[1]


def payload(size: int) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(size))


def chunk(data: bytes, upload_id: str, index: int) -> ChunkRequest:
    piece = data[index * CHUNK : (index + 1) * CHUNK]
    return ChunkRequest(
        upload_id=upload_id, index=index, sha256=hashlib.sha256(piece).hexdigest(), data=piece
    )


def begin_request(data: bytes) -> BeginRequest:
    return BeginRequest(
        name="thermal:1",
        kind="closure",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        chunk_size=CHUNK,
    )


async def test_an_upload_begun_on_one_instance_is_finished_on_another(
    instances: tuple[Uploads, Uploads],
) -> None:
    first, second = instances
    data = payload(10 * CHUNK + 123)  # 11 chunks
    sha = hashlib.sha256(data).hexdigest()
    opened = await first.begin(SENDER, begin_request(data))
    upload_id = opened["upload_id"]
    assert (opened["complete"], opened["next_index"], opened["chunk_count"]) == (False, 0, 11)
    for index in (0, 1, 2, 5):  # 5 arrives ahead of the prefix
        reply = await first.chunk(SENDER, chunk(data, upload_id, index))
    assert reply["next_index"] == 3
    assert await first.registry.received_ranges(upload_id) == [(0, 3), (5, 6)]

    # The first instance is gone; the client begins again and lands on the second.
    resumed = await second.begin(SENDER, begin_request(data))
    assert (resumed["upload_id"], resumed["next_index"]) == (upload_id, 3)
    assert (await second.chunk(SENDER, chunk(data, upload_id, 3)))["next_index"] == 4
    assert (await second.chunk(SENDER, chunk(data, upload_id, 4)))["next_index"] == 6
    assert (await second.chunk(SENDER, chunk(data, upload_id, 1)))["next_index"] == 6  # again
    for index in range(6, 11):
        reply = await second.chunk(SENDER, chunk(data, upload_id, index))
    assert reply["next_index"] == 11
    assert not await second.has_artifact(sha)  # not visible before commit verifies it

    committed = await second.commit(SENDER, UploadRef(upload_id=upload_id))
    assert committed == {"artifact": sha, "size": len(data), "kind": "closure"}
    for instance in (first, second):  # every instance sees it, and fetches it verified
        assert await instance.has_artifact(sha)
        assert (await instance.local_artifact(sha)).read_bytes() == data
    with pytest.raises(NotFound):
        await first.registry.get_upload(upload_id)
    with pytest.raises(NotFound):  # its chunks are gone from the store
        await second.artifacts.read_chunk(upload_id, 0)
    assert (await first.begin(SENDER, begin_request(data)))["complete"] is True


async def test_commit_needs_every_chunk_whichever_instance_got_them(
    instances: tuple[Uploads, Uploads],
) -> None:
    first, second = instances
    data = payload(3 * CHUNK)
    upload_id = (await first.begin(SENDER, begin_request(data)))["upload_id"]
    await first.chunk(SENDER, chunk(data, upload_id, 0))
    await second.chunk(SENDER, chunk(data, upload_id, 2))
    with pytest.raises(InvalidRequest, match="missing chunks from 1"):
        await second.commit(SENDER, UploadRef(upload_id=upload_id))
    with pytest.raises(NotFound):  # only its sender may go on with it
        await second.chunk("mallory-key", chunk(data, upload_id, 1))
    await second.chunk(SENDER, chunk(data, upload_id, 1))
    assert (await first.commit(SENDER, UploadRef(upload_id=upload_id)))["size"] == len(data)


async def test_chunks_arriving_at_both_instances_at_once_all_count(
    instances: tuple[Uploads, Uploads],
) -> None:
    """As with requests spread over instances by a shared subscription: every chunk in flight
    at once, alternately at each instance, in reverse order."""
    first, second = instances
    data = payload(12 * CHUNK)
    upload_id = (await first.begin(SENDER, begin_request(data)))["upload_id"]
    replies: dict[int, int] = {}

    async def send(instance: Uploads, index: int) -> None:
        replies[index] = (await instance.chunk(SENDER, chunk(data, upload_id, index)))["next_index"]

    async with anyio.create_task_group() as group:
        for index in reversed(range(12)):
            group.start_soon(send, (first, second)[index % 2], index)
    assert max(replies.values()) == 12  # whichever reply saw the prefix complete
    assert await second.registry.received_ranges(upload_id) == [(0, 12)]
    committed = await first.commit(SENDER, UploadRef(upload_id=upload_id))
    assert committed["artifact"] == hashlib.sha256(data).hexdigest()


async def _fill(uploads: Uploads, data: bytes) -> str:
    upload_id: str = (await uploads.begin(SENDER, begin_request(data)))["upload_id"]
    for index in range(-(-len(data) // CHUNK)):
        await uploads.chunk(SENDER, chunk(data, upload_id, index))
    return upload_id


async def _refused(uploads: Uploads, upload_id: str, sha: str, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match) as refused:
        await uploads.commit(SENDER, UploadRef(upload_id=upload_id))
    assert refused.value.details["expected"] == sha
    assert not await uploads.has_artifact(sha)  # never visible
    with pytest.raises(NotFound):  # discarded: begin again
        await uploads.registry.get_upload(upload_id)
    with pytest.raises(NotFound):
        await uploads.artifacts.read_chunk(upload_id, 0)


async def _overwrite(store: ArtifactStore, upload_id: str, index: int, data: bytes) -> None:
    await store.put_chunk(upload_id, index, data)


async def test_bytes_corrupted_in_the_store_are_refused_at_the_digest_check(
    instances: tuple[Uploads, Uploads],
) -> None:
    first, second = instances
    data = payload(4 * CHUNK)
    sha = hashlib.sha256(data).hexdigest()
    upload_id = await _fill(first, data)
    flipped = bytearray(data[2 * CHUNK : 3 * CHUNK])
    flipped[100] ^= 0xFF
    await _overwrite(first.artifacts, upload_id, 2, bytes(flipped))  # rot, or a bad writer
    await _refused(second, upload_id, sha, "hash to")


async def test_a_short_chunk_in_the_store_is_refused_at_the_digest_check(
    instances: tuple[Uploads, Uploads],
) -> None:
    first, second = instances
    data = payload(3 * CHUNK + 10)
    sha = hashlib.sha256(data).hexdigest()
    upload_id = await _fill(first, data)
    await _overwrite(first.artifacts, upload_id, 3, b"short")
    await _refused(second, upload_id, sha, "short: chunk 3")


async def test_an_announced_digest_the_bytes_do_not_have_is_refused(
    instances: tuple[Uploads, Uploads],
) -> None:
    first, second = instances
    data = payload(2 * CHUNK)
    claimed = hashlib.sha256(b"something else").hexdigest()
    request = begin_request(data).model_copy(update={"sha256": claimed})
    upload_id = (await first.begin(SENDER, request))["upload_id"]
    for index in range(2):
        await first.chunk(SENDER, chunk(data, upload_id, index))
    await _refused(second, upload_id, claimed, "not the announced")
    assert not await second.has_artifact(hashlib.sha256(data).hexdigest())


async def test_an_upload_aborted_or_expired_through_another_instance_is_gone_everywhere(
    location: str, postgres_url: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        made = []
        for name, idle_s in (("first", 3600.0), ("second", 0.0)):
            registry = await stack.enter_async_context(Registry.open(postgres_url))
            store = open_store(location, tmp_path / name / "cache")
            limits = UploadLimits(idle_timeout_s=idle_s)
            made.append(Uploads(registry, tmp_path / name, limits, store, shared=True))
        first, second = made
        data = payload(3 * CHUNK)
        aborted = (await first.begin(SENDER, begin_request(data)))["upload_id"]
        await first.chunk(SENDER, chunk(data, aborted, 0))
        await second.abort(SENDER, UploadRef(upload_id=aborted))
        with pytest.raises(NotFound, match="begin \\(or resume\\) it again"):
            await first.chunk(SENDER, chunk(data, aborted, 1))
        with pytest.raises(NotFound):
            await first.artifacts.read_chunk(aborted, 0)

        idle = (await first.begin(SENDER, begin_request(data)))["upload_id"]
        assert idle != aborted
        await first.chunk(SENDER, chunk(data, idle, 0))
        assert await second.expire_idle() == 1  # the second's limit: idle at once
        with pytest.raises(NotFound):
            await first.artifacts.read_chunk(idle, 0)
        with pytest.raises(NotFound):
            await first.commit(SENDER, UploadRef(upload_id=idle))


def quadrupled(inputs: list[list[float]]) -> list[float]:
    return [4.0 * sum(x) for x in inputs]


@pytest.mark.slow
async def test_through_the_service_an_upload_begun_on_one_proxy_is_finished_on_another(
    memory_harness: ProxyHarness, location: str, postgres_url: str, tmp_path: Path
) -> None:
    archive = build_closure_archive(quadrupled)
    size = len(archive) // 5 + 1  # five chunks
    pieces = [archive[i : i + size] for i in range(0, len(archive), size)]
    assert len(pieces) == 5
    body: dict[str, Any] = {
        "name": "quad:1",
        "kind": "closure",
        "size": len(archive),
        "sha256": hashlib.sha256(archive).hexdigest(),
        "chunk_size": size,
    }
    common = {
        "registry": postgres_url,
        "artifacts": location,
        "entity_path": memory_harness.settings().entity_file,
    }

    async def send(client: ServiceClient, upload_id: str, index: int) -> int:
        piece = pieces[index]
        reply = await client.call(
            "deploy",
            "upload.chunk",
            upload_id=upload_id,
            index=index,
            sha256=hashlib.sha256(piece).hexdigest(),
            data=piece,
        )
        return int(reply["next_index"])

    async with memory_harness.serving(**common) as first:
        opened = await first.operator.call("deploy", "upload.begin", **body)
        upload_id = opened["upload_id"]
        assert await send(first.operator, upload_id, 0) == 1
        assert await send(first.operator, upload_id, 2) == 1  # ahead of the prefix

    async with memory_harness.serving(data_dir=tmp_path / "second", **common) as second:
        resumed = await second.operator.call("deploy", "upload.begin", **body)
        assert (resumed["upload_id"], resumed["next_index"]) == (upload_id, 1)
        assert await send(second.operator, upload_id, 1) == 3  # chunk 2 was kept
        for index in range(3, len(pieces)):
            await send(second.operator, upload_id, index)
        committed = await second.operator.call("deploy", "upload.commit", upload_id=upload_id)
        assert committed["artifact"] == body["sha256"]
        await second.operator.deploy_artifact("quad", "1", "doubles", committed["artifact"])
        await second.operator.wait_ready("quad", "1", timeout_s=60)
        reply = await second.operator.predict(model="quad", input=[1.0, 2.0])
        assert reply["output"] == 12.0
    assert not (tmp_path / "second" / "spool").exists() or not any(
        (tmp_path / "second" / "spool").iterdir()
    )


async def test_a_commit_racing_another_instances_commit_succeeds(
    instances: tuple[Uploads, Uploads],
) -> None:
    """A commit re-sent during a lead hand-over runs on two instances at once: the one that
    reads the chunks after the other stored the artifact and dropped them answers the same
    artifact, never "the bytes hash to missing" (and it never discards the upload)."""
    first, second = instances
    data = payload(3 * CHUNK + 7)
    sha = hashlib.sha256(data).hexdigest()
    upload_id = (await first.begin(SENDER, begin_request(data)))["upload_id"]
    for index in range(4):
        await first.chunk(SENDER, chunk(data, upload_id, index))
    seen_by_second = await second.registry.get_upload(upload_id)  # it began committing, then…
    committed = await first.commit(SENDER, UploadRef(upload_id=upload_id))  # …the first won
    assert committed["artifact"] == sha
    assert second._shared is not None
    await second._shared.commit(seen_by_second)  # chunks gone, artifact there: no error
    assert (await second.local_artifact(sha)).read_bytes() == data
