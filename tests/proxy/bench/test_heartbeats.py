"""``modelbus bench heartbeats`` runs end to end with fifty services (its own ZeroMQ
forwarder, publisher and raw receiver processes) and prints one row per N with ours, the bare
library's CPU and the ratio; no figure is asserted."""

from __future__ import annotations

from proxy.bench.heartbeats import run_bench


def test_one_row_per_size_with_the_services_seen() -> None:
    table = run_bench((50,), 6.0, None, lambda line: None)  # 5 beats/s in all
    rows = [line.split() for line in table.splitlines() if line.strip().startswith("50 ")]
    assert len(rows) == 1, table
    cells = rows[0]
    assert int(cells[-5]) > 0, table  # the monitor saw services beating
    assert int(cells[-1]) > 0, table  # the raw receiver got the frames too
    assert cells[6].endswith("x"), table  # ours / raw
