"""Closure archives: building, reading untrusted archives, compatibility checks, loading."""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.artifact import (
    Manifest,
    build_closure_archive,
    check_archive,
    check_compatible,
    detect_packages,
    load_closure,
    read_manifest,
)
from bus.errors import DecodeError, InvalidRequest
from tests.proxy import models

HERE_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def write(tmp_path: Path, data: bytes, name: str = "model.zip") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def members_of(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def with_manifest(data: bytes, **changes: Any) -> bytes:
    """The same archive with manifest fields changed (None removes a field)."""
    members = members_of(data)
    manifest = json.loads(members["manifest.json"])
    for key, value in changes.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    members["manifest.json"] = json.dumps(manifest).encode()
    return zip_of(members)


def uses_anyio(inputs: list[Any]) -> list[Any]:
    return [anyio.current_time.__name__ for _ in inputs]


def test_round_trip_keeps_function_and_describes_it(tmp_path: Path) -> None:
    path = write(tmp_path, build_closure_archive(models.double))
    manifest = read_manifest(path)
    assert manifest.kind == "closure"
    assert manifest.python == HERE_PYTHON
    assert manifest.python_full == ".".join(map(str, sys.version_info[:3]))
    assert manifest.packages["cloudpickle"] == importlib.metadata.version("cloudpickle")
    closure = members_of(path.read_bytes())["closure.pkl"]
    assert manifest.closure_sha256 == hashlib.sha256(closure).hexdigest()
    check_compatible(manifest)
    assert load_closure(path)([1, 2.5]) == [2, 5.0]


def test_closures_and_lambdas_keep_captured_values(tmp_path: Path) -> None:
    offset = 7
    scale = write(tmp_path, build_closure_archive(models.scaler(3)), "scale.zip")
    shift = write(tmp_path, build_closure_archive(lambda xs: [x + offset for x in xs]), "l.zip")
    assert load_closure(scale)([1, 2]) == [3, 6]
    assert load_closure(shift)([1]) == [8]


def test_own_modules_are_shipped_by_value(tmp_path: Path) -> None:
    """A fresh interpreter that cannot import tests.proxy.models still runs its function."""
    path = write(tmp_path, build_closure_archive(models.batch_lengths))
    program = (
        "import sys, zipfile, pickle\n"
        "assert 'tests' not in sys.modules\n"
        f"f = pickle.loads(zipfile.ZipFile({str(path)!r}).read('closure.pkl'))\n"
        "print(f([1, 2, 3]))\n"
    )
    env = {key: os.environ[key] for key in ("PATH", "HOME") if key in os.environ}
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[3, 3, 3]"


def test_detects_installed_packages_the_function_uses() -> None:
    found = detect_packages(uses_anyio)
    assert found["anyio"] == importlib.metadata.version("anyio")
    assert not any(name in found for name in ("os", "sys", "json"))


def test_explicit_packages_replace_detection_but_cloudpickle_is_recorded(tmp_path: Path) -> None:
    data = build_closure_archive(uses_anyio, packages={"numpy": "1.26.4"})
    manifest = read_manifest(write(tmp_path, data))
    assert set(manifest.packages) == {"numpy", "cloudpickle"}


def test_unpicklable_function_is_refused_at_build() -> None:
    with (
        tempfile.TemporaryFile() as handle,
        pytest.raises(InvalidRequest, match="cannot be pickled"),
    ):
        build_closure_archive(lambda xs: [handle.fileno() for _ in xs])


@pytest.mark.parametrize(
    ("python", "full"), [("3.7", "3.7.9"), ("2.7", "2.7.18"), ("3.99", "3.99.0")]
)
def test_other_python_is_incompatible(tmp_path: Path, python: str, full: str) -> None:
    data = with_manifest(build_closure_archive(models.double), python=python, python_full=full)
    manifest = read_manifest(write(tmp_path, data))
    with pytest.raises(InvalidRequest) as caught:
        check_compatible(manifest)
    assert full in caught.value.message
    assert f"Python {HERE_PYTHON}" in caught.value.message


def test_missing_package_is_incompatible(tmp_path: Path) -> None:
    data = build_closure_archive(models.double, packages={"modelbus-no-such-package": "1.0"})
    with pytest.raises(InvalidRequest, match=r"modelbus-no-such-package 1\.0.*not installed"):
        check_compatible(read_manifest(write(tmp_path, data)))


def test_other_major_version_is_incompatible(tmp_path: Path) -> None:
    installed = importlib.metadata.version("anyio")
    major = int(installed.split(".")[0])
    data = build_closure_archive(models.double, packages={"anyio": f"{major + 1}.0.0"})
    with pytest.raises(InvalidRequest) as caught:
        check_compatible(read_manifest(write(tmp_path, data)))
    assert f"anyio {major + 1}.0.0" in caught.value.message
    assert f"anyio {installed}" in caught.value.message
    same_major = build_closure_archive(models.double, packages={"anyio": f"{major}.0.0"})
    check_compatible(read_manifest(write(tmp_path, same_major, "ok.zip")))


def test_not_a_zip_is_a_decode_error(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="not a closure archive"):
        read_manifest(write(tmp_path, b"definitely not a zip file"))


def test_missing_file_is_an_invalid_request(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="cannot be read"):
        read_manifest(tmp_path / "absent.zip")


@pytest.mark.parametrize("name", ["../evil.py", "/etc/cron.d/x", "closure.pkl/../../x", "extra"])
def test_unexpected_members_are_refused(tmp_path: Path, name: str) -> None:
    members = members_of(build_closure_archive(models.double))
    members[name] = b"payload"
    with pytest.raises(DecodeError, match="unexpected member"):
        read_manifest(write(tmp_path, zip_of(members)))


def test_missing_or_duplicate_members_are_refused(tmp_path: Path) -> None:
    members = members_of(build_closure_archive(models.double))
    with pytest.raises(DecodeError, match=r"exactly one closure\.pkl"):
        read_manifest(write(tmp_path, zip_of({"manifest.json": members["manifest.json"]})))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, pytest.warns(UserWarning, match="Duplicate"):
        for name, data in [*members.items(), ("closure.pkl", b"second")]:
            archive.writestr(name, data)
    with pytest.raises(DecodeError, match=r"exactly one closure\.pkl"):
        read_manifest(write(tmp_path, buffer.getvalue(), "dup.zip"))


def test_oversized_archives_and_members_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, build_closure_archive(models.double))
    with pytest.raises(DecodeError, match="over the 100-byte limit"):
        read_manifest(path, max_archive_bytes=100)
    with pytest.raises(DecodeError, match=r"closure\.pkl is .* over the 10-byte limit"):
        read_manifest(path, max_closure_bytes=10)
    bomb = zip_of({"manifest.json": b" " * 70_000, "closure.pkl": b""})
    with pytest.raises(DecodeError, match=r"manifest\.json is 70000 bytes"):
        read_manifest(write(tmp_path, bomb, "bomb.zip"))


@pytest.mark.parametrize(
    ("changes", "error", "pattern"),
    [
        ({"format": 2}, InvalidRequest, "another archive format"),
        ({"kind": "image"}, InvalidRequest, "not a closure archive"),
        ({"surprise": 1}, DecodeError, "surprise"),
        ({"created_ns": "yesterday"}, DecodeError, "created_ns"),
        ({"closure_sha256": None}, DecodeError, "closure_sha256"),
        ({"packages": {"../bad": "1"}}, DecodeError, "bad package entry"),
        ({"python": "three"}, DecodeError, "python"),
    ],
)
def test_bad_manifests_are_refused(
    tmp_path: Path, changes: dict[str, Any], error: type[Exception], pattern: str
) -> None:
    data = with_manifest(build_closure_archive(models.double), **changes)
    with pytest.raises(error, match=pattern):
        read_manifest(write(tmp_path, data))


def test_manifest_that_is_not_json_is_refused(tmp_path: Path) -> None:
    members = members_of(build_closure_archive(models.double))
    members["manifest.json"] = b"{not json"
    with pytest.raises(DecodeError, match="not JSON"):
        read_manifest(write(tmp_path, zip_of(members)))


def test_manifest_is_frozen() -> None:
    manifest = Manifest(
        format=1,
        kind="closure",
        python="3.11",
        python_full="3.11.7",
        packages={},
        created_ns=1,
        closure_sha256="0" * 64,
    )
    with pytest.raises(ValueError, match="frozen"):
        manifest.python = "3.7"  # type: ignore[misc]


def test_tampered_closure_is_refused_on_load(tmp_path: Path) -> None:
    members = members_of(build_closure_archive(models.double))
    members["closure.pkl"] = pickle.dumps(print)
    with pytest.raises(DecodeError, match="does not match the digest"):
        load_closure(write(tmp_path, zip_of(members)))


def test_closure_needing_a_missing_module_fails_to_load_with_advice(tmp_path: Path) -> None:
    ghost = b"cmodelbus_ghost_module\npredict\n."  # protocol-0 pickle of a global
    data = with_manifest(
        build_closure_archive(models.double), closure_sha256=hashlib.sha256(ghost).hexdigest()
    )
    members = members_of(data)
    members["closure.pkl"] = ghost
    with pytest.raises(InvalidRequest, match=r"No module named 'modelbus_ghost_module'.*install"):
        load_closure(write(tmp_path, zip_of(members)))


def test_archive_of_a_non_callable_is_refused(tmp_path: Path) -> None:
    value = pickle.dumps([1, 2])
    members = members_of(
        with_manifest(
            build_closure_archive(models.double),
            closure_sha256=hashlib.sha256(value).hexdigest(),
        )
    )
    members["closure.pkl"] = value
    with pytest.raises(InvalidRequest, match="not a callable"):
        load_closure(write(tmp_path, zip_of(members)))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_documented_errors(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "random.zip"
        path.write_bytes(data)
        with pytest.raises((DecodeError, InvalidRequest)):
            read_manifest(path)


ORIGINAL = build_closure_archive(models.double)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_mangled_archives_raise_only_documented_errors(data: st.DataObject) -> None:
    original = ORIGINAL
    position = data.draw(st.integers(0, len(original) - 1))
    mangled = bytearray(original)
    mangled[position] ^= data.draw(st.integers(1, 255))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mangled.zip"
        path.write_bytes(bytes(mangled))
        try:
            func = load_closure(path)
        except (DecodeError, InvalidRequest):
            return
    # A byte the reader does not depend on (a timestamp, a comment) changed: the same model.
    assert func([1.0, 2.5]) == models.double([1.0, 2.5]) == [2.0, 5.0]


@pytest.mark.parametrize(
    "changes",
    [
        {"format": 2},
        {"surprise": 1},
        {"closure_sha256": None},
        {"python": "three"},
        {"closure_sha256": "0" * 64},  # a closure.pkl that is not the bytes the manifest names
    ],
)
def test_check_archive_refuses_with_one_code_before_anything_runs(
    tmp_path: Path, changes: dict[str, Any]
) -> None:
    """What a deploy checks before it registers anything: every manifest problem and a
    closure.pkl that does not match its digest are one code, invalid_request."""
    data = with_manifest(build_closure_archive(models.double), **changes)
    with pytest.raises(InvalidRequest) as refused:
        check_archive(write(tmp_path, data))
    assert refused.value.code == "invalid_request"


def test_check_archive_refuses_a_manifest_missing_a_key(tmp_path: Path) -> None:
    members = members_of(build_closure_archive(models.double))
    manifest = json.loads(members["manifest.json"])
    del manifest["closure_sha256"]
    members["manifest.json"] = json.dumps(manifest).encode()
    with pytest.raises(InvalidRequest, match="closure_sha256"):
        check_archive(write(tmp_path, zip_of(members)))


def test_check_archive_accepts_a_good_archive_and_a_deep_manifest_is_no_crash(
    tmp_path: Path,
) -> None:
    good = write(tmp_path, build_closure_archive(models.double), "good.zip")
    assert check_archive(good).kind == "closure"
    members = members_of(build_closure_archive(models.double))
    members["manifest.json"] = b"[" * 30_000 + b"]" * 30_000  # under the 64 KiB limit
    with pytest.raises(InvalidRequest, match="not JSON"):
        check_archive(write(tmp_path, zip_of(members), "deep.zip"))
