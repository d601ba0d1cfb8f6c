"""Forecast replies and model listings as readable tables: values with provenance, gaps marked
with their reason, cached points, composed provenance, problems; coverage summaries."""

from __future__ import annotations

from datetime import timedelta, timezone

from container_manager.forecast_table import format_forecast, format_models

PST = timezone(timedelta(hours=-8), "PST")
T0 = 1517299200 * 10**9
HALF = 1800 * 10**9


def test_a_forecast_table() -> None:
    reply = {
        "step": "30min",
        "points": [
            [T0, 20.0, [["early", "1"]]],
            [T0 + HALF, None, []],
            [T0 + 2 * HALF, 5.5, [["a", "1"], ["b", "2"]]],
        ],
        "gaps": [[T0 + HALF, T0 + 2 * HALF, "no usable model can predict this time"]],
        "cached": [[T0, T0 + HALF]],
        "composed": True,
        "problems": [{"model": "x", "version": "1", "code": "timeout", "message": "late"}],
    }
    lines = format_forecast(reply, PST)
    assert lines[1].split() == ["2018-01-30", "00:00", "PST", "20.000", "early:1", "(cached)"]
    assert lines[2].endswith("gap: no usable model can predict this time")
    assert lines[3].split()[-1] == "a:1+b:2"
    assert lines[4] == "3 points of 30min, 1 in gaps; composed from the place's children"
    assert lines[5] == "problem: x:1 timeout: late"


def test_a_models_table() -> None:
    coverage = {"timezone": "UTC", "ranges": [{"start": "2018-01-30 00:00", "end": "2018-01-31"}]}
    entry = {
        "name": "early",
        "version": "1",
        "is_current": True,
        "context": {"zone": "A"},
        "relation": "place",
        "resolution_s": 900,
        "coverage": coverage,
    }
    lines = format_models([entry, entry | {"coverage": None, "is_current": False}])
    assert lines[1].split()[:5] == ["early:1", "yes", "zone=A", "place", "900s"]
    assert lines[1].endswith("2018-01-30 00:00 → 2018-01-31 [UTC]")
    assert lines[2].endswith("can_predict")
    windowed = format_models([entry | {"covered": [[T0, T0 + HALF]]}], PST)
    assert windowed[1].endswith("2018-01-30 00:00 PST → 2018-01-30 00:30 PST")
    assert format_models([]) == ["no usable model"]
