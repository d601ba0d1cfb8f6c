"""``bench choose``'s end-to-end part against a real ``modelbus serve`` process: the chooser's
segments are the three models' inputs, and the report has its lines (the figures themselves are
not asserted). Covers proxy/bench/choose_e2e.py and proxy/bench/demos/forecast.py's models."""

from __future__ import annotations

import json

import pytest

from proxy.bench.choose import run_choose_bench
from proxy.bench.choose_e2e import segment_inputs
from proxy.bench.demos.forecast import zone_model

pytestmark = pytest.mark.slow


def test_the_direct_calls_are_the_chooser_segments() -> None:
    found = segment_inputs()
    assert [model for model, _ in found] == ["zone-a-early", "zone-a-day", "zone-a-night"]
    points = [asked["points"] for _, asked in found]
    assert points == [32, 40, 16]  # 00-08 h, 08-18 h, 20-24 h in 15-minute steps
    model = zone_model(20.0)
    _, asked = found[0]
    assert model([asked]) == model([json.dumps(asked)]) and len(model([asked])[0]) == 32


def test_the_report_has_the_end_to_end_lines() -> None:
    lines = run_choose_bench(sizes=(10,), repeats=3, end_to_end_rounds=3)
    assert lines[-5].startswith("end to end, one-day 30-minute query stitched from 3 models")
    assert "forecast (choose + 3 concurrent calls + stitch): p50" in lines[-4]
    assert "directly over the bus" in lines[-3] and "chooser overhead" in lines[-2]
    assert "next to the single largest call" in lines[-1]
