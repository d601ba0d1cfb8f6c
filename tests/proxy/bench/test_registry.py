"""``modelbus bench registry`` (proxy/bench/registry.py), run small against the session's
PostgreSQL (tests/fixtures/postgres.py, whose server is proxy/bench/postgres_server.py) and a
SQLite file: the result's shape, and that each service really kept its versions in its own
registry — read back here from the SQLite file and the PostgreSQL database. No figure is asserted
(timing is the benchmark's to print).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from proxy.bench.registry import WARM_UP, Timing, print_registry_table, run_registry_bench
from proxy.cli.bench import bench
from proxy.registry import Registry

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

DEPLOYS = 3


async def _versions(registry: str, model: str) -> list[str]:
    async with Registry.open(registry) as opened:
        return sorted(m.version for m in await opened.list_models(model))


def test_timing_takes_the_median_and_the_90th_percentile() -> None:
    timing = Timing.of([i / 1000 for i in range(1, 11)])
    assert timing.p50_ms == pytest.approx(5.5)
    assert timing.p90_ms == pytest.approx(10.0)


async def test_a_small_run_uses_both_registries(
    postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import anyio

    result = await anyio.to_thread.run_sync(
        lambda: run_registry_bench(DEPLOYS, 5, postgres_url, workdir=tmp_path)
    )
    assert (result.sqlite.label, result.postgres.label) == ("SQLite", "PostgreSQL")
    assert result.sqlite.registry == str(tmp_path / "registry.sqlite3")
    assert result.postgres.registry == postgres_url
    for row in (result.sqlite, result.postgres):
        for timing in (row.deploy, row.upload_deploy, row.write, row.predict):
            assert 0 < timing.p50_ms <= timing.p90_ms
        assert row.versions == 1 + 2 * (WARM_UP + DEPLOYS)
    deployed = sorted(
        [str(v) for v in range(1 + WARM_UP + DEPLOYS)] + [f"u{i}" for i in range(WARM_UP + DEPLOYS)]
    )
    written = sorted(f"w{i}" for i in range(WARM_UP + DEPLOYS))
    for registry in (result.sqlite.registry, postgres_url):
        assert await _versions(registry, result.model) == deployed
        assert await _versions(registry, f"{result.model}w") == written
    assert result.ratio("deploy") == result.postgres.deploy.p50_ms / result.sqlite.deploy.p50_ms

    print_registry_table(result)
    out = capsys.readouterr().out
    assert "model.deploy over the bus" in out and "(target < 1.10)" in out
    assert "upload + model.deploy over the bus" in out
    assert "predict over the bus" in out and "(target < 1.05)" in out
    assert "note: PostgreSQL: --postgres-url" in out


def test_the_command_refuses_a_url_that_is_not_postgresql() -> None:
    result = CliRunner().invoke(bench, ["registry", "--postgres-url", "sqlite:///x"])
    assert result.exit_code == 2
    assert "not a postgresql:// URL" in result.output
