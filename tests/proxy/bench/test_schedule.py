"""``modelbus bench schedule`` runs end to end on a small scale and reports what it measured
(no timing is asserted: benchmarks print comparisons, tests check they measured them)."""

from __future__ import annotations

import anyio

from proxy.bench.schedule import print_schedule_table, run_schedule_bench


def test_a_small_schedule_bench(capsys: object) -> None:
    result = anyio.run(run_schedule_bench, 20, 2, 3, 1)
    assert result.windows == 40  # every schedule's window of each pass ran once
    assert len(result.delays_ms) == 3  # one real-time window per delay schedule
    assert result.scheduler_s > 0 and result.direct_s > 0 and result.one_at_a_time_calls == 40
    assert result.batched_s > 0 and result.bookkeeping_us > 0
    assert 0 < result.sign_us < result.publish_us  # publishing signs, and does more
    print_schedule_table(result)
    shown = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "through the scheduler" in shown and "p99" in shown and "floor per window" in shown
