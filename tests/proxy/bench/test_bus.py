"""Smoke test of ``modelbus bench bus``: it runs end to end with tiny counts and prints the table.

No timing is asserted (a benchmark's figures are for people); the test checks the program
measures both sides on every bus it starts and prints their ratio.

Covers proxy/bench/bus.py, proxy/bench/bus_results.py, proxy/bench/buses.py,
proxy/bench/raw.py, proxy/bench/predict.py, proxy/bench/upload.py, proxy/bench/service.py and
proxy/cli/bench.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from proxy.bench.bus import check_bus_url
from proxy.cli.bench import bench

_NUMBER = r"[\d,.]+"


def _has_mosquitto() -> bool:
    return bool(shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin"))


def _run_bench(*args: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "bench", "bus", *args],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_bench_bus_prints_ours_raw_and_the_ratio_for_each_bus() -> None:
    out = _run_bench("--count", "200", "--requests", "30", "--size", "100")
    schemes = ["zmq"] + (["mqtt"] if _has_mosquitto() else [])
    for scheme in schemes:
        ours = re.search(rf"^{scheme}://127\.0\.0\.1:\d+ +ours +({_NUMBER}) +", out, re.M)
        assert ours, f"no 'ours' row for {scheme}:\n{out}"
    transport_rows = re.findall(rf"^\S.* our transport alone +{_NUMBER} ", out, re.M)
    assert len(transport_rows) == len(schemes), out
    assert len(re.findall(rf"^ +raw (?:pyzmq|paho) +{_NUMBER} ", out, re.M)) == len(schemes), out
    ratios = re.findall(rf"^ +ours/raw +({_NUMBER})x +{_NUMBER}x +({_NUMBER})x", out, re.M)
    assert len(ratios) == len(schemes), out
    assert re.search(r"200/200", out), out  # loopback with raised queues loses nothing
    assert "hits" in out and "misses 1," in out, out
    assert re.search(r"sign [\d.]+ us, verify [\d.]+ us", out), out
    assert "targets:" in out
    if not _has_mosquitto():
        assert "mosquitto binary is missing" in out


def test_bench_bus_refuses_a_bus_off_loopback() -> None:
    result = CliRunner().invoke(bench, ["bus", "--bus", "mqtt://192.0.2.1:1883", "--count", "1"])
    assert result.exit_code == 2
    assert "loopback" in result.output


@pytest.mark.parametrize(
    ("url", "label"),
    [("zmq://127.0.0.1:7700", "ZeroMQ forwarder"), ("mqtt://localhost:1883", "MQTT broker")],
)
def test_loopback_buses_are_accepted(url: str, label: str) -> None:
    assert check_bus_url(url) == label


@pytest.mark.parametrize("url", ["memory://x", "mqtt://example.com:1883", "zmq://10.0.0.1:7700"])
def test_other_buses_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        check_bus_url(url)
