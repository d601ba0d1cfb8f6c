"""``bench policies``' served part runs a real service and produces its lines (figures are
not asserted): both p50s, the added percentage, and the shadow copies that ran."""

from __future__ import annotations

from proxy.bench.shadow import run_served_bench


def test_the_served_lines_compare_with_and_without_a_shadow() -> None:
    lines = run_served_bench(count=40, blocks=2)
    assert lines[1].startswith("contract, release 1 alone")
    assert lines[2].startswith("contract, + a shadow of every request")
    assert lines[2].split()[-1] in ("ok", "MISSED") and "%" in lines[2]
    copies = int(lines[3].rsplit(" ", 1)[1])
    assert copies >= 1  # every shadowed request is copied (some may still be queued)
