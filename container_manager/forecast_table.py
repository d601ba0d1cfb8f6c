"""Forecast replies (PROTOCOL §17.8) as readable tables, for the command line and the demo.

``format_forecast`` prints one line per point — its time in a zone, the value, and the model and
version that made it (``a:1+b:1`` when composed from a place's children), ``gap: <reason>`` where
no usable model answered — then a summary and the problems met on the way. ``format_models``
prints a ``forecast.models`` listing with each model's coverage.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any

__all__ = ["format_forecast", "format_models"]

_NS = 10**9


def _when(ts_ns: int, zone: tzinfo) -> str:
    local = datetime.fromtimestamp(ts_ns / _NS, UTC).astimezone(zone)
    return local.strftime("%Y-%m-%d %H:%M %Z")


def format_forecast(reply: dict[str, Any], zone: tzinfo = UTC) -> list[str]:
    """A forecast reply as lines of a table: time, value, provenance or the gap's reason."""
    gaps = [(int(start), int(end), str(reason)) for start, end, reason in reply["gaps"]]
    cached = [(int(start), int(end)) for start, end in reply.get("cached", [])]
    lines = [f"{'time':<22} {'value':>12}  model:version"]
    for ts, value, refs in reply["points"]:
        made = "+".join(f"{name}:{version}" for name, version in refs)
        if value is None:
            reason = next((r for start, end, r in gaps if start <= ts < end), "no value")
            lines.append(f"{_when(ts, zone):<22} {'—':>12}  gap: {reason}")
            continue
        mark = " (cached)" if any(start <= ts < end for start, end in cached) else ""
        lines.append(f"{_when(ts, zone):<22} {value:>12.3f}  {made}{mark}")
    missing = sum(1 for _, value, _ in reply["points"] if value is None)
    summary = f"{len(reply['points'])} points of {reply['step']}, {missing} in gaps"
    if reply.get("composed"):
        summary += "; composed from the place's children"
    lines.append(summary)
    for problem in reply.get("problems", []):
        lines.append(
            f"problem: {problem['model']}:{problem['version']} {problem['code']}: "
            f"{problem['message']}"
        )
    return lines


def _coverage_text(entry: dict[str, Any], zone: tzinfo) -> str:
    if entry.get("covered") is not None:
        spans = [f"{_when(a, zone)} → {_when(b, zone)}" for a, b in entry["covered"]]
        return "; ".join(spans) or "nothing in the window"
    coverage = entry.get("coverage")
    if coverage is None:
        return "can_predict"
    ranges = [f"{r['start']} → {r['end']}" for r in coverage.get("ranges", [])]
    rules = len(coverage.get("rules", []))
    text = "; ".join(ranges) or "always"
    return f"{text}{f' ({rules} rules)' if rules else ''} [{coverage['timezone']}]"


def format_models(entries: Sequence[dict[str, Any]], zone: tzinfo = UTC) -> list[str]:
    if not entries:
        return ["no usable model"]
    lines = [
        f"{'model:version':<24} {'current':<7} {'place':<14} {'relation':<8} {'step':>6}  coverage"
    ]
    for entry in entries:
        ref = f"{entry['name']}:{entry['version']}"
        place = ",".join(f"{kind}={ident}" for kind, ident in entry["context"].items())
        current = "yes" if entry["is_current"] else "no"
        lines.append(
            f"{ref:<24} {current:<7} {place:<14} {entry['relation']:<8} "
            f"{entry['resolution_s']:>5}s  {_coverage_text(entry, zone)}"
        )
    return lines
