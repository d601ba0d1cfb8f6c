"""The user's container engine (container_manager.engine) against a real one: Podman's Docker
API (tests/fixtures/podman.py). An image made with ``podman import`` is found by reference,
exported as a ``docker save`` tarball that names it, and a missing image or engine is a typed
error."""

from __future__ import annotations

import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus import DecodeError, NotFound, TransportError
from container_manager import engine
from tests.fixtures.podman import find_podman


@pytest.fixture
def image(docker_url: str, tmp_path: Path) -> Iterator[str]:
    """A one-file image in the engine's storage, removed afterwards."""
    (tmp_path / "hello.txt").write_text("hello\n")
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as archive:
        archive.add(tmp_path / "hello.txt", arcname="hello.txt")
    reference = f"localhost/modelbus-engine-test:{uuid.uuid4().hex[:8]}"
    podman = find_podman()
    subprocess.run([podman, "import", str(rootfs), reference], check=True, capture_output=True)
    try:
        yield reference
    finally:
        subprocess.run([podman, "rmi", "-f", reference], check=False, capture_output=True)


def test_an_image_is_exported_as_a_tarball_that_names_it(
    docker_url: str, image: str, tmp_path: Path
) -> None:
    image_id = engine.image_id(image, engine=docker_url)
    assert image_id.removeprefix("sha256:").isalnum()
    written: list[int] = []
    tarball = engine.export_image(
        image, tmp_path / "saved.tar", engine=docker_url, progress=written.append
    )
    assert written and written[-1] == tarball.stat().st_size
    assert image in engine.image_references(tarball)


def test_a_missing_image_is_not_found(docker_url: str, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="has no image"):
        engine.export_image("localhost/modelbus-absent:1", tmp_path / "x.tar", engine=docker_url)


def test_no_engine_is_a_transport_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TransportError, match="cannot reach the container engine"):
        engine.image_id("anything:1", engine=f"unix://{tmp_path}/absent.sock")
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    assert engine.engine_url() == "tcp://127.0.0.1:2375"
    with pytest.raises(TransportError, match="unsupported engine URL"):
        engine.image_id("anything:1", engine="ssh://host")


def test_a_file_that_is_not_a_saved_image_is_a_decode_error(tmp_path: Path) -> None:
    (tmp_path / "junk.tar").write_bytes(b"not a tarball")
    with pytest.raises(DecodeError, match="not a 'docker save' tarball"):
        engine.image_references(tmp_path / "junk.tar")
