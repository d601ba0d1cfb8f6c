"""``modelbus bench remote`` runs end to end against a real MLServer (the one tests/run.sh
installs): four rows of real latencies, and the comparison printed. Figures are not asserted.

Covers proxy/bench/remote.py and its command in proxy/cli/bench.py.
"""

from __future__ import annotations

import click.testing
import pytest

from proxy.cli import main
from tests.fixtures.mlserver import find_mlserver

pytestmark = pytest.mark.slow


def test_bench_remote_measures_direct_backend_and_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELBUS_MLSERVER", find_mlserver())
    result = click.testing.CliRunner().invoke(main, ["bench", "remote", "--count", "16"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    rows = {line[:34].strip(): line[34:].split() for line in lines[1:4]}
    assert set(rows) == {
        "direct V2 call, aiohttp",
        "V2 backend (RemoteV2Versions)",
        "modelbus serve (ZeroMQ) -> V2",
    }
    assert all(float(p50) > 0 and float(p99) >= float(p50) for p50, p99 in rows.values())
    assert "added by the V2 backend (p50, vs direct)" in result.stdout


def test_without_mlserver_it_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELBUS_MLSERVER", raising=False)
    result = click.testing.CliRunner().invoke(main, ["bench", "remote", "--count", "16"])
    assert result.exit_code == 1
    assert "MODELBUS_MLSERVER" in result.stderr
