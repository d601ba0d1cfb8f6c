"""``bench policies`` produces its table: one row per decision (figures are not asserted)."""

from __future__ import annotations

from chooser.policies import COMBINE_MODES, POLICIES
from proxy.bench.policies import run_policies_bench


def test_the_table_has_a_row_per_policy_and_mode() -> None:
    lines = run_policies_bench(calls=5)
    rows = lines[2:]
    assert len(rows) == 3 + len(POLICIES) + len(COMBINE_MODES) + 1
    for name in (*POLICIES, *COMBINE_MODES, "sticky", "latest", "log key"):
        assert any(name in row for row in rows), name
    assert all(row.split()[-1] in ("ok", "MISSED") for row in rows)
