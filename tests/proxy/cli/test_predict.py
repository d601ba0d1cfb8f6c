"""``modelbus predict`` and ``modelbus models`` against a real service on Mosquitto, with range
models deployed through the Clipper-style container manager (``deploy_python_closure(...,
metadata=...)``): the stitched table with provenance and the gap, ``--json``, the listing,
``--stream-proof`` for a model trained on guarded streams, a direct ``--model`` call, and
``modelbus deploy --meta`` refusing invalid metadata before it uploads anything.

Covers proxy/cli/predict.py.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from bus import Entity, Grant
from bus.grants import encode_chain
from tests.container_manager.conftest import RunningService
from tests.proxy.cli.test_deploy import environment, invoke, model_file
from tests.proxy.service.forecast.helpers import DAY, flat, meta

pytestmark = pytest.mark.mqtt

__all__ = ["model_file"]  # the fixture, shared with test_deploy


def _deploy_three(service: RunningService, zone: str, streams: list[str]) -> None:
    manager = service.manager()
    manager.connect()
    try:
        for name, value, (first, last), trained_on in (
            (f"early-{zone}", 20.0, (0, 10), []),
            (f"day-{zone}", 21.0, (8, 18), []),
            (f"night-{zone}", 19.0, (20, 24), streams),
        ):
            metadata = meta(first, last, context={"zone": zone}, training_streams=trained_on)
            manager.deploy_python_closure(
                name.lower(), "1", "strings", flat(value), metadata=metadata
            )
        for name in ("early", "day", "night"):
            manager.call(manager.service.wait_ready, f"{name}-{zone}".lower(), "1")
    finally:
        manager.close()


def test_predict_prints_the_stitched_day_and_models_lists(
    service: RunningService, tmp_path: Path
) -> None:
    zone = f"z{uuid.uuid4().hex[:8]}"
    sensors = Entity.generate()
    streams = [f"{sensors.key_text}/soda/{zone}/temp"]
    _deploy_three(service, zone, streams)
    env = environment(service, tmp_path, "viewer")
    asked = ["--type", "thermal", "--context", f"zone={zone}", "--start", DAY[0], "--end", DAY[1]]

    table = invoke("predict", *asked, "--granularity", "30min", env=env)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["time", "value", "model:version"]
    assert lines[1].split() == ["2018-01-30", "00:00", "PST", "20.000", f"early-{zone}:1"]
    assert lines[17].split() == ["2018-01-30", "08:00", "PST", "21.000", f"day-{zone}:1"]
    # The night model is trained on streams this viewer may not consume: 18-24 h is a gap.
    assert lines[37].split()[:5] == ["2018-01-30", "18:00", "PST", "—", "gap:"]
    assert all("night" not in line for line in lines)
    assert lines[49] == "48 points of 30min, 12 in gaps"

    now = time.time_ns()
    grant = Grant.create(
        sensors, service.viewer.public_key, f"{sensors.key_text}/soda/*", "C",
        ttl=0, expires_ns=now + 3600 * 10**9, created_ns=now - 1,
    )  # fmt: skip
    proof = tmp_path / "streams.grant"
    proof.write_bytes(encode_chain([grant]))
    seen = invoke("predict", *asked, "--stream-proof", str(proof), "--json", env=env)
    assert seen.exit_code == 0, seen.output
    reply = json.loads(seen.stdout)
    assert reply["points"][40][2] == [[f"night-{zone}", "1"]]
    assert [gap[2] for gap in reply["gaps"]] == ["no usable model can predict this time"]

    listed = invoke("models", "--type", "thermal", "--context", f"zone={zone}", env=env)
    assert listed.exit_code == 0, listed.output
    names = [line.split()[0] for line in listed.stdout.splitlines()[1:]]
    assert names == [f"day-{zone}:1", f"early-{zone}:1"]
    window = ["--start", DAY[0], "--end", DAY[1], "--stream-proof", str(proof), "--json"]
    listed = invoke("models", "--type", "thermal", "--context", f"zone={zone}", *window, env=env)
    entries = {entry["name"]: entry for entry in json.loads(listed.stdout)}
    assert len(entries) == 3 and entries[f"night-{zone}"]["training_streams"] == streams
    assert entries[f"early-{zone}"]["covered"] == [[1517299200 * 10**9, 1517335200 * 10**9]]

    direct = invoke("predict", "--model", f"early-{zone}", "--input", json.dumps("now"), env=env)
    assert direct.exit_code == 0, direct.output
    assert json.loads(direct.stdout) == 20.0


def test_usage_errors_and_metadata_checked_before_upload(
    service: RunningService, tmp_path: Path, model_file: Path
) -> None:
    env = environment(service, tmp_path)
    half = invoke("predict", "--type", "thermal", "--context", "zone=A", env=env)
    assert half.exit_code == 2 and "give --type, --context, --start and --end" in half.stderr
    mixed = invoke("predict", "--model", "m", "--type", "thermal", "--input", "1", env=env)
    assert mixed.exit_code == 2
    bad = tmp_path / "bad.json"
    coverage = {"timezone": "Mars/Olympus", "rules": [{"hours": [1]}]}
    wrong = {"type": "thermal", "context": {"zone": "A"}, "resolution_s": 0, "coverage": coverage}
    bad.write_text(json.dumps(wrong))
    args = ["deploy", "m", "1", "--function", f"{model_file}:predict", "--meta", str(bad)]
    refused = invoke(*args, env=env)
    assert refused.exit_code == 2
    assert "resolution_s" in refused.stderr and "coverage.timezone" in refused.stderr
    assert "uploading" not in refused.stderr
    both = invoke(*args, "--metadata", "{}", env=env)
    assert both.exit_code == 2 and "not both" in both.stderr
