"""Smoke test of ``modelbus bench upload --image``: with a tiny image on the tests' Podman engine
it measures the direct pipe and our path on every bus it starts, and prints both tables.

No timing is asserted (a benchmark's figures are for people); the test checks that every row
has its phases, the ratio and the memory verdict, and that the image it built is gone after.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from proxy.backend.docker_engine import DockerEngine
from proxy.cli.bench import bench

_N = r"[\d.]+"


def _has_mosquitto() -> bool:
    return bool(shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin"))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bench_upload_image_prints_direct_ours_ratio_and_memory(docker_url: str) -> None:
    argv = ["upload", "--image", "--image-mib", "2", "--docker-url", docker_url]
    completed = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "bench", *argv],
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    out = completed.stdout
    assert completed.returncode == 0, completed.stderr[-3000:] + out
    assert re.search(rf"^docker save \| docker load \(no bus\) +{_N} +- +{_N} +{_N} ", out, re.M)
    labels = ["ZeroMQ forwarder"] + (["Mosquitto"] if _has_mosquitto() else [])
    for label in labels:
        phases = rf"^modelbus over {label} +{_N} +{_N} +{_N} +{_N} +{_N} +({_N})x$"
        assert re.search(phases, out, re.M), f"no timing row for {label}:\n{out}"
        memory = rf"^modelbus over {label} +(?:{_N} +){{5}}(flat|GREW)$"
        assert re.search(memory, out, re.M), f"no memory row for {label}:\n{out}"
    assert re.search(r"^target: ours within 2x of direct: ZeroMQ forwarder [\d.]+x ", out, re.M)
    built = re.search(r"built (\S+) \(2 MiB", out)
    assert built, out
    assert not DockerEngine(docker_url).has_image(built.group(1)), "the bench left its image"


def test_bench_upload_image_refuses_an_engine_off_loopback() -> None:
    result = CliRunner().invoke(
        bench, ["upload", "--image", "--docker-url", "tcp://192.0.2.1:2375"]
    )
    assert result.exit_code == 2, result.output
    assert "loopback" in result.output
