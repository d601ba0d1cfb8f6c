"""``modelbus demo fit`` (proxy/bench/demos/fit.py, through proxy/cli/demo.py) runs end to end:
the fit switches versions with no failed request and the schedule backfills two windows."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from proxy.cli.main import main


def test_the_fit_demo(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["demo", "fit", "--data-dir", str(tmp_path / "demo")], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "failed requests: 0" in result.output
    assert "succeeded: new version occupancy:1-fit-" in result.output
    assert result.output.count(": done (attempts 1)") == 3
    assert "3 outputs persisted on the bus" in result.output
