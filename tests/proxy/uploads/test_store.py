"""The artifact store contract, over a directory and over a real S3 server (moto in server mode,
tests/fixtures/s3.py): content-addressed, put-if-absent, verified where used, chunks of shared
uploads, collection. And the S3 store's own promises: a corrupt object in the bucket is refused
when fetched (never used), a fetch lands in the local cache only verified, the endpoint and
credentials come from the environment, errors are typed.

Covers proxy/uploads/store.py and proxy/uploads/s3.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bus.errors import InternalError, InvalidRequest, NotFound
from proxy.uploads.artifacts import FileStore
from proxy.uploads.s3 import S3Store
from proxy.uploads.store import ArtifactStore, open_store
from tests.fixtures.s3 import S3Server


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "s3":
        bucket: str = request.getfixturevalue("s3_bucket")
        return open_store(f"s3://{bucket}/models/v1", tmp_path / "cache")
    return open_store(f"file://{tmp_path}/shared", tmp_path / "cache")


def spooled(directory: Path, data: bytes) -> tuple[Path, str]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"spool-{hashlib.sha256(data).hexdigest()[:8]}"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_locations_pick_the_store() -> None:
    cache = Path("/tmp/unused-cache")
    assert isinstance(open_store("/shared/x", cache), FileStore)
    assert isinstance(open_store("file:///shared/x", cache), FileStore)
    s3 = open_store("s3://bucket/a/b/", cache)
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix) == ("bucket", "a/b")
    assert s3.location_of("f" * 64) == f"s3://bucket/a/b/{'f' * 64}"
    for wrong in ("s3://", "s3://bucket/p?endpoint=http://x", "http://host/x", "file://h/x"):
        with pytest.raises(InvalidRequest):
            open_store(wrong, cache)


async def test_an_artifact_is_stored_by_digest_and_fetched_verified(
    store: ArtifactStore, tmp_path: Path
) -> None:
    await store.check()
    data = b"closure archive " * 5000
    path, sha = spooled(store.scratch_dir, data)
    assert not await store.has(sha)
    assert not await store.touch(sha)
    with pytest.raises(NotFound):
        await store.local(sha)
    await store.put(path, sha)
    assert await store.has(sha) and not path.exists()
    assert await store.touch(sha)
    local = await store.local(sha)
    assert local.read_bytes() == data
    assert (await store.local_at(store.location_of(sha))).read_bytes() == data

    again, same = spooled(tmp_path / "elsewhere", data)
    await store.put(again, same)  # put-if-absent: the same bytes again change nothing
    assert (await store.local(sha)).read_bytes() == data


async def test_a_big_artifact_goes_up_in_parts_and_comes_back_whole(
    store: ArtifactStore, tmp_path: Path
) -> None:
    data = bytes(range(256)) * (80 * 1024 * 1024 // 256 + 7)  # over the multipart threshold
    path, sha = spooled(tmp_path / "spool", data)
    await store.put(path, sha)
    if isinstance(store, S3Store):
        (store.cache_dir / sha).unlink(missing_ok=True)  # make the next use download it
    local = await store.local(sha)
    assert local.stat().st_size == len(data)
    assert hashlib.sha256(local.read_bytes()).hexdigest() == sha


async def test_chunks_of_an_upload_are_kept_and_dropped(store: ArtifactStore) -> None:
    upload_id = "0123456789abcdef" * 2
    await store.put_chunk(upload_id, 0, b"first")
    await store.put_chunk(upload_id, 1, b"second")
    await store.put_chunk(upload_id, 1, b"second")  # a chunk sent again
    assert await store.read_chunk(upload_id, 1) == b"second"
    assert store.chunks_location(upload_id).endswith(upload_id)
    await store.drop_chunks(upload_id)
    with pytest.raises(NotFound):
        await store.read_chunk(upload_id, 0)
    await store.drop_chunks(upload_id)  # none left is fine
    with pytest.raises(InvalidRequest):
        await store.put_chunk("../../etc", 0, b"x")


async def test_unreferenced_artifacts_are_collected_after_the_grace_time(
    store: ArtifactStore,
) -> None:
    kept, kept_sha = spooled(store.scratch_dir / "k", b"referenced")
    dropped, dropped_sha = spooled(store.scratch_dir / "d", b"nobody's")
    await store.put(kept, kept_sha)
    await store.put(dropped, dropped_sha)
    assert await store.collect({kept_sha}, unused_for_s=3600.0) == []  # within the grace time
    assert await store.collect({kept_sha}, unused_for_s=-60.0) == [dropped_sha]
    assert await store.has(kept_sha) and not await store.has(dropped_sha)
    with pytest.raises(NotFound):
        await store.local(dropped_sha)


async def test_a_corrupt_object_in_the_bucket_is_refused_not_used(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    store = open_store(f"s3://{s3_bucket}/p", tmp_path / "cache")
    assert isinstance(store, S3Store)
    path, sha = spooled(tmp_path / "spool", b"the real closure")
    await store.put(path, sha)
    s3_server.client().put_object(Bucket=s3_bucket, Key=f"p/{sha}", Body=b"tampered with")
    (store.cache_dir / sha).unlink()
    with pytest.raises(InternalError, match="corrupt"):
        await store.local(sha)
    assert sorted(p.name for p in store.cache_dir.iterdir()) == []  # nothing half-fetched kept


async def test_an_unreachable_or_missing_bucket_is_an_internal_error(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = open_store("s3://no-such-bucket-here/p", tmp_path / "cache")
    with pytest.raises(InternalError, match=r"NoSuchBucket .*s3://no-such-bucket-here/p"):
        await missing.check()
    path, sha = spooled(tmp_path / "spool", b"x")
    with pytest.raises(InternalError, match="no-such-bucket-here"):
        await missing.put(path, sha)
    from tests.fixtures.ports import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    unreachable = open_store(f"s3://{s3_bucket}/p", tmp_path / "cache2")
    with pytest.raises(InternalError, match="cannot reach") as raised:
        await unreachable.check()
    assert "testing" not in raised.value.message  # no credential in the message


def test_the_service_setting_takes_a_directory_or_a_bucket() -> None:
    from pydantic import ValidationError

    from proxy.service.settings import ProxySettings

    for accepted in ("/shared", "file:///shared", "s3://bucket/prefix"):
        assert ProxySettings(artifacts=accepted).artifacts == accepted
    with pytest.raises(ValidationError):
        ProxySettings(artifacts="http://host/bucket")


def test_an_s3_location_with_credentials_is_refused_without_repeating_them(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as refused:
        open_store("s3://AKIAEXAMPLE:TOPSECRET@bucket/prefix", tmp_path / "cache")
    assert "TOPSECRET" not in refused.value.message and "AKIAEXAMPLE" not in refused.value.message
    with pytest.raises(InvalidRequest):
        open_store("s3://bucket:9000/prefix", tmp_path / "cache")


async def test_a_missing_artifact_in_a_directory_is_not_found(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "artifacts")
    with pytest.raises(NotFound):
        await store.local_at(str(tmp_path / "artifacts" / ("0" * 64)))
