"""The forecast step of ``modelbus demo``: "thermal, zone A, one day, 30 min", answered by meaning.

Three thermal models of zone A are deployed with forecast metadata (PROTOCOL §17.8): ``early``
covers 00-10 h, ``day`` 08-18 h (deployed later, so it wins the overlap) and ``night`` 20-24 h;
18-20 h is no one's. The viewer asks for 2018-01-30 in 30-minute steps and the demo prints the
stitched table — each point's value and the model that made it — and the gap, stated as a gap.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import click

from chooser import parse_instant
from container_manager import ServiceClient
from container_manager.forecast_table import format_forecast

__all__ = ["DAY", "RANGES", "forecast_tour", "metadata_for", "zone_model"]

DAY = ("2018-01-30 00:00:00 PST", "2018-01-31 00:00:00 PST")
RANGES = {"early": (0, 10, 18.0), "day": (8, 18, 21.0), "night": (20, 24, 17.5)}


def zone_model(base: float) -> Callable[[list[Any]], list[Any]]:
    """A range model: one value per 15-minute step of its segment, a gentle daily wave. A str
    input is the same segment input as JSON (how ``bench choose`` calls it directly)."""

    def predict(inputs: list[Any]) -> list[Any]:
        outputs = []
        for given in inputs:
            asked = json.loads(given) if isinstance(given, str) else given
            start_s, step = asked["start_ns"] // 10**9, asked["step_s"]
            outputs.append(
                [
                    round(base + math.sin((start_s + k * step) / 86400 * 2 * math.pi), 3)
                    for k in range(asked["points"])
                ]
            )
        return outputs

    return predict


def metadata_for(first_hour: int, last_hour: int) -> dict[str, Any]:
    end = f"2018-01-30 {last_hour:02}:00" if last_hour < 24 else "2018-01-31 00:00"
    return {
        "type": "thermal",
        "context": {"zone": "A"},
        "resolution_s": 900,
        "coverage": {
            "timezone": "America/Los_Angeles",
            "ranges": [{"start": f"2018-01-30 {first_hour:02}:00", "end": end}],
        },
    }


async def forecast_tour(operator: ServiceClient, viewer: ServiceClient) -> None:
    click.secho(
        "\n== thermal, zone A, one day, 30 min: three models (00-10 h, 08-18 h, 20-24 h), "
        "stitched by the service",
        bold=True,
    )
    for name, (first, last, base) in RANGES.items():
        await operator.deploy_function(
            f"zone-a-{name}", "1", zone_model(base), "strings", metadata=metadata_for(first, last)
        )
    for name in RANGES:
        await operator.wait_ready(f"zone-a-{name}", "1")
    began = time.perf_counter()
    reply = await viewer.forecast("thermal", {"zone": "A"}, *DAY, "30min")
    took_ms = (time.perf_counter() - began) * 1e3
    zone = parse_instant(DAY[0]).tzinfo
    for line in format_forecast(reply, zone) if zone is not None else format_forecast(reply):
        click.echo(line)
    click.echo(f"answered in {took_ms:.1f} ms: {len(reply['gaps'])} gap(s), stated, never filled")
