"""The content-addressed artifact store in a directory, and two proxies sharing one store (with
the registry on PostgreSQL): a closure deployed through one is served by the other, which never
saw its upload — the store a shared directory, or a bucket on a real S3 server (moto): the
second proxy starts its replica from the artifact it fetches from S3 and verifies.

Covers proxy/uploads/artifacts.py and the --artifacts wiring of proxy/service/startup.py.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from bus.errors import InvalidRequest
from proxy.uploads.artifacts import FileStore, artifact_root
from tests.proxy.conftest import ProxyHarness


def test_the_root_is_a_path_or_a_file_url() -> None:
    assert artifact_root("file:///shared/artifacts") == Path("/shared/artifacts")
    assert artifact_root("file://localhost/a%20b") == Path("/a b")
    assert artifact_root("/shared/x") == Path("/shared/x")
    with pytest.raises(InvalidRequest, match="not http://"):
        artifact_root("http://host/prefix")
    with pytest.raises(InvalidRequest):
        artifact_root("file://otherhost/x")


def _spool(directory: Path, data: bytes) -> tuple[Path, str]:
    spool = directory / "spool"
    spool.write_bytes(data)
    return spool, hashlib.sha256(data).hexdigest()


async def test_a_spool_on_the_same_filesystem_is_renamed_into_place(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "artifacts")
    spool, sha = _spool(tmp_path, b"closure bytes")
    assert not await store.has(sha)
    await store.put(spool, sha)
    assert await store.has(sha) and not spool.exists()
    assert store.path(sha).read_bytes() == b"closure bytes"


async def test_a_spool_on_another_filesystem_is_copied_verified_then_renamed(
    tmp_path: Path,
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.fail("this test needs /dev/shm on a filesystem other than tmp_path's")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        store = FileStore(Path(other) / "artifacts")
        spool, sha = _spool(tmp_path, b"x" * 3_000_000)
        await store.put(spool, sha)
        assert store.path(sha).read_bytes() == b"x" * 3_000_000
        assert not spool.exists()
        assert [p.name for p in store.root.iterdir()] == [sha]  # no .incoming- left behind

        spool, _ = _spool(tmp_path, b"not what was announced")
        with pytest.raises(Exception, match="changed while being copied"):
            await store.put(spool, "0" * 64)
        assert [p.name for p in store.root.iterdir()] == [sha]


def tripled() -> Callable[[list[list[float]]], list[float]]:
    def predict(inputs: list[list[float]]) -> list[float]:
        return [3.0 * sum(x) for x in inputs]

    return predict


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "s3"])
async def test_two_proxies_share_the_registry_and_the_artifacts(
    memory_harness: ProxyHarness,
    postgres_url: str,
    tmp_path: Path,
    kind: str,
    request: pytest.FixtureRequest,
) -> None:
    shared = tmp_path / "shared-artifacts"
    location = f"file://{shared}"
    if kind == "s3":
        location = f"s3://{request.getfixturevalue('s3_bucket')}/models"
    common = {
        "registry": postgres_url,
        "artifacts": location,
        "entity_path": memory_harness.settings().entity_file,
    }
    async with memory_harness.serving(**common) as first:
        await first.operator.deploy_function("thermal", "1", tripled(), "doubles")
        await first.operator.wait_ready("thermal", "1")
    if kind == "s3":
        bucket = location.removeprefix("s3://").partition("/")[0]
        listed = request.getfixturevalue("s3_server").client().list_objects_v2(Bucket=bucket)
        keys = [item["Key"] for item in listed["Contents"]]
        assert len(keys) == 1 and len(keys[0].removeprefix("models/")) == 64  # no chunks left
        stored = keys[0].removeprefix("models/")
    else:
        (stored,) = [p.name for p in shared.iterdir() if not p.name.startswith(".")]
    assert not (memory_harness.data_dir / "artifacts").exists() or not any(
        (memory_harness.data_dir / "artifacts").iterdir()
    )

    other_data = tmp_path / "second-proxy"
    async with memory_harness.serving(data_dir=other_data, **common) as second:
        await second.operator.wait_ready("thermal", "1", timeout_s=60)
        reply = await second.operator.predict(model="thermal", input=[1.0, 2.0])
        assert reply["output"] == 9.0
    if kind == "s3":  # the second proxy fetched it from the bucket, verified, into its cache
        cached = other_data / "cache" / stored
        assert hashlib.sha256(cached.read_bytes()).hexdigest() == stored
    assert not (other_data / "artifacts").exists() or not any((other_data / "artifacts").iterdir())
