"""``bench choose`` produces its table (the figures themselves are not asserted)."""

from __future__ import annotations

from proxy.bench.choose import run_choose_bench


def test_the_table_has_one_row_per_size_and_the_stitch_line() -> None:
    lines = run_choose_bench(sizes=(10, 100), repeats=3)
    assert lines[2].split()[0] == "10" and lines[3].split()[0] == "100"
    assert lines[-1].startswith("stitch of the three answers")
    assert len(lines) == 5
