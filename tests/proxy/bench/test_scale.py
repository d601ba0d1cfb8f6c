"""``modelbus bench scale`` (proxy/bench/scale.py): its CPU accounting from /proc, its verdict on
what saturates, and one small real run — a plain proxy and two instances as ``modelbus serve``
processes on a Mosquitto of its own — whose table it prints. No figure is asserted (timing is
the benchmark's to print), only that each row measured predictions without errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import click
import pytest

from proxy.bench.scale import (
    ScaleRow,
    cpu_seconds,
    machine_busy_s,
    per_core,
    print_scale_table,
    run_scale_bench,
)
from proxy.bench.scale import _saturation as saturation


def test_cpu_seconds_count_a_process_and_its_descendants() -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    child = subprocess.Popen(  # a shell whose own child burns 0.3 s of CPU, then sleeps
        ["sh", "-c", f"{sys.executable} -c '{burn}'; sleep 30"]
    )
    try:
        busy_before = machine_busy_s()
        while cpu_seconds([child.pid]) < 0.25:
            assert child.poll() is None
            time.sleep(0.05)  # another process's CPU time cannot be awaited
        assert cpu_seconds([child.pid]) < 5
        assert machine_busy_s() > busy_before
    finally:
        child.kill()
        child.wait()
    assert cpu_seconds([child.pid]) == 0.0  # gone: nothing
    assert cpu_seconds([os.getpid()]) > 0


def row(**cpu: float) -> ScaleRow:
    return ScaleRow("shared", 2, 100.0, 0, {"broker": 0, "proxies": 0, "client": 0} | cpu)


def test_the_verdict_names_what_saturates() -> None:
    assert saturation(row(proxies=1.0, client=0.8, machine=1.9), 2).startswith(
        "the cores: 1.90 of 2 busy, 1.80 of it ours"
    )
    assert saturation(row(proxies=0.3, machine=1.9), 2).endswith("1.60 other processes'")
    assert saturation(row(client=0.95, machine=1.2), 2) == "the client (one core: 0.95)"
    assert "latency-bound" in saturation(row(broker=0.1, machine=0.3), 2)
    assert per_core(row(broker=0.1, proxies=0.3, client=0.1, machine=2.0)) == 200.0


@pytest.mark.mqtt
@pytest.mark.slow
def test_a_small_run_measures_every_row(capsys: pytest.CaptureFixture[str]) -> None:
    rows, notes = run_scale_bench(120, 4, 2, instances=(2,))
    assert [(r.label, r.proxies) for r in rows] == [("plain", 1), ("shared", 2)]
    for measured in rows:
        assert measured.per_s > 0 and measured.errors == 0
        assert measured.cpu["proxies"] > 0 and measured.cpu["client"] > 0
    print_scale_table(rows, notes, 4, 2)
    out = capsys.readouterr().out
    assert notes[0].startswith("environment:") and notes[0] in out
    assert "1 proxy, plain (the baseline)" in out and "2 instances, $share group" in out
    assert out.count("saturated with") == 2


def test_the_command_is_registered() -> None:
    from proxy.cli.bench import bench

    assert isinstance(bench, click.Group) and "scale" in bench.commands
