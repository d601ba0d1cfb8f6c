"""Collecting artifacts no version refers to (issue 12 item 9), on real files: kept while
referenced or recently used, deleted past the grace time, anything else in the folder left alone.
And on a running service: ``upload.begin`` of an artifact it holds keeps it from collection."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio

from proxy.uploads.collect import DEFAULT_UNUSED_FOR_S, collect_artifacts
from tests.proxy.conftest import ProxyHarness


def artifact(folder: Path, digit: str, age_s: float) -> str:
    name = digit * 64
    path = folder / name
    path.write_bytes(b"x")
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return name


def test_unreferenced_artifacts_past_the_grace_time_are_deleted(tmp_path: Path) -> None:
    old = 2 * DEFAULT_UNUSED_FOR_S
    kept = artifact(tmp_path, "a", old)  # referenced by a version
    fresh = artifact(tmp_path, "b", 60)  # just uploaded, not deployed yet
    stale = artifact(tmp_path, "c", old)
    stray = tmp_path / "notes.txt"
    stray.write_text("not an artifact")
    os.utime(stray, (0, 0))
    assert collect_artifacts(tmp_path, {kept}) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept, fresh, "notes.txt"]
    assert collect_artifacts(tmp_path, {kept}) == []


async def test_announcing_a_held_artifact_keeps_it(memory_harness: ProxyHarness) -> None:
    with anyio.fail_after(60):
        async with memory_harness.serving() as service:
            folder = service.data_dir / "artifacts"
            name = artifact(folder, "d", 2 * DEFAULT_UNUSED_FOR_S)
            body = {"name": "x", "kind": "closure", "size": 1, "sha256": name, "chunk_size": 1}
            reply = await service.operator.call("deploy", "upload.begin", **body)
            assert reply == {"complete": True, "artifact": name}
            assert collect_artifacts(folder, set()) == []  # touched: in use again
