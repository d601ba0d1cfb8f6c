"""``docker save`` tarballs a deployer sends: one image only, loaded untagged, decompression
bounded (proxy.backend.image_tarball), on tarballs built here from local files."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from bus.errors import InvalidRequest, LimitExceeded
from proxy.backend.image_tarball import untagged_copy
from proxy.backend.images import check_saved_image

ENTRY = {"modelbus.entry": "closure:/model/model.closure"}


def _config(labels: dict[str, str], salt: str) -> bytes:
    return json.dumps({"config": {"Labels": labels, "Env": [salt]}}).encode()


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def _saved(
    path: Path, images: list[list[str]], *, padding: int = 0, compress: bool = False
) -> list[str]:
    """A ``docker save``-like tarball with one image per entry of ``images`` (its tags), each a
    config and a tiny layer; ``padding`` zero bytes in a member before the manifest. Ids."""
    buffer = io.BytesIO()
    manifest, ids = [], []
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        if padding:
            _add(archive, "padding.bin", bytes(padding))
        for index, tags in enumerate(images):
            config = _config(ENTRY, f"image-{index}")
            digest = hashlib.sha256(config).hexdigest()
            _add(archive, f"{digest}.json", config)
            _add(archive, f"layer{index}/layer.tar", b"\0" * 1024)
            manifest.append(
                {
                    "Config": f"{digest}.json",
                    "RepoTags": tags,
                    "Layers": [f"layer{index}/layer.tar"],
                }
            )
            ids.append(f"sha256:{digest}")
        _add(archive, "manifest.json", json.dumps(manifest).encode())
        _add(archive, "repositories", json.dumps({"thermal": {"1": "x"}}).encode())
    data = buffer.getvalue()
    path.write_bytes(gzip.compress(data, compresslevel=1) if compress else data)
    return ids


def test_a_tarball_with_two_images_is_refused(tmp_path: Path) -> None:
    tarball = tmp_path / "two.tar"
    _saved(tarball, [["thermal:1"], ["python:3.11-slim"]])
    with pytest.raises(InvalidRequest, match="holds 2 images") as caught:
        check_saved_image(tarball, "thermal:1")
    assert caught.value.details == {"images": 2}
    with pytest.raises(InvalidRequest, match="holds 2 images"):
        untagged_copy(tarball, tmp_path / "copy.tar")
    assert not (tmp_path / "copy.tar").exists()


def test_an_image_with_two_tags_is_refused(tmp_path: Path) -> None:
    tarball = tmp_path / "tags.tar"
    _saved(tarball, [["thermal:1", "debian:bookworm"]])
    with pytest.raises(InvalidRequest, match="2 tags"):
        check_saved_image(tarball, "thermal:1")


def test_the_loaded_copy_holds_the_image_without_any_tag(tmp_path: Path) -> None:
    tarball = tmp_path / "one.tar"
    [image_id] = _saved(tarball, [["thermal:1"]])
    assert check_saved_image(tarball, "thermal:1").id == image_id
    copy = tmp_path / "copy.tar"
    untagged_copy(tarball, copy)
    with tarfile.open(copy) as archive:
        names = sorted(archive.getnames())
        manifest = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert "repositories" not in names
    assert [entry["RepoTags"] for entry in manifest] == [[]]
    assert set(names) == {f"{image_id[7:]}.json", "layer0/layer.tar", "manifest.json"}


def test_a_compressed_tarball_is_read_within_bounds(tmp_path: Path) -> None:
    tarball = tmp_path / "small.tar.gz"
    [image_id] = _saved(tarball, [["thermal:1"]], compress=True)
    assert check_saved_image(tarball, "thermal:1").id == image_id
    untagged_copy(tarball, tmp_path / "copy.tar")
    assert tarfile.is_tarfile(tmp_path / "copy.tar")


def test_a_decompression_bomb_is_stopped(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    _saved(bomb, [["thermal:1"]], padding=96 * 1024 * 1024, compress=True)
    assert bomb.stat().st_size < 1024 * 1024  # 96 MiB of zeros
    with pytest.raises(LimitExceeded, match="unpacks to more than"):
        check_saved_image(bomb, "thermal:1")
    with pytest.raises(LimitExceeded):
        untagged_copy(bomb, tmp_path / "copy.tar")
    assert not (tmp_path / "copy.tar").exists()
