"""The end-to-end part of ``modelbus bench choose``: the chooser's overhead on a real service.

It runs ``modelbus serve`` in its own process (embedded ZeroMQ bus on free ports), deploys the
demo's three thermal models of zone A (00-10 h, 08-18 h, 20-24 h, 15-minute resolution:
:mod:`proxy.bench.demos.forecast`) and, alternating in the same run, times

- **forecast**: one ``forecast`` request — one day, 30-minute steps — that the service answers by
  choosing, calling the three models concurrently, validating and stitching (48 points, a gap);
- **direct**: the same three model calls made by the client itself over the bus, concurrently:
  ``predict`` with, for each segment the chooser picks, the very input the service sends (as a
  JSON string: ``predict`` checks Clipper's input types, and the models read either form);
- **largest**: only the largest of the three calls, directly: one bus round trip, like the
  forecast's, so the difference is the service's choosing, fan-out and stitching.

Overhead = (forecast p50 - direct p50) / direct p50; target under 20 %. The forecast makes one bus
round trip where the direct path makes three (concurrent) ones, so the ratio may be under 1: the
service's own cost of choosing and stitching is what ``plan`` and ``stitch`` cost above.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from bus import BusClient, runner
from chooser import (
    Candidate,
    CandidateIndex,
    ModelMetadata,
    ModelRef,
    Query,
    SegmentRequest,
    plan,
)
from container_manager import ServiceClient
from proxy.bench.buses import free_port_block
from proxy.bench.demos.forecast import DAY, RANGES, metadata_for, zone_model
from proxy.bench.service import service_process
from transports import open_transport

__all__ = ["TARGET_OVERHEAD", "run_end_to_end", "segment_inputs"]

TARGET_OVERHEAD = 0.20


def segment_inputs() -> list[tuple[str, dict[str, Any]]]:
    """``(model, input)`` for each segment the chooser picks for the benchmark's query."""
    index = CandidateIndex()
    for created, (name, (first, last, _)) in enumerate(RANGES.items()):
        meta = ModelMetadata.parse(metadata_for(first, last))
        index.add(Candidate(ModelRef(f"zone-a-{name}", "1"), meta, created_ns=created))
    query = Query.parse("thermal", "zone=A", *DAY, "30min")
    chosen = plan(query, index)
    return [
        (
            segment.model.name,
            SegmentRequest.for_choice("thermal", segment, segment.choices[0]).to_input(),
        )
        for segment in chosen.calls()
    ]


def _p50(samples: list[float]) -> float:
    return sorted(samples)[len(samples) // 2]


async def _measure(service: ServiceClient, rounds: int) -> dict[str, list[float]]:
    calls = [(model, json.dumps(asked)) for model, asked in segment_inputs()]

    async def one(model: str, text: str) -> None:
        await service.predict(model=model, version="1", input=text)

    async def direct() -> None:
        async with anyio.create_task_group() as group:
            for model, text in calls:
                group.start_soon(one, model, text)

    async def forecast() -> None:
        reply = await service.forecast("thermal", "zone=A", *DAY, "30min")
        assert len(reply["points"]) == 48 and len(reply["gaps"]) == 1, reply["gaps"]

    async def largest() -> None:
        await one(*max(calls, key=lambda call: len(call[1])))

    paths = {"forecast": forecast, "direct": direct, "largest": largest}
    for _ in range(20):  # warm up every path (connections, workers, caches of grants)
        for run in paths.values():
            await run()
    timed: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, run in paths.items():
            began = time.perf_counter()
            await run()
            timed[name].append(time.perf_counter() - began)
    return timed


async def _run(service_uri: str, bus_url: str, user: Any, grant: Any, rounds: int) -> Any:
    async with BusClient(open_transport(bus_url), user, proofs=[[grant]]) as bus:
        service = ServiceClient(bus, service_uri)
        await service.check_alive()
        for name, (first, last, base) in RANGES.items():
            await service.deploy_function(
                f"zone-a-{name}",
                "1",
                zone_model(base),
                "strings",
                metadata=metadata_for(first, last),
            )
        for name in RANGES:
            await service.wait_ready(f"zone-a-{name}", "1")
        return await _measure(service, rounds)


def run_end_to_end(rounds: int = 200) -> list[str]:
    """The end-to-end lines of the report (the CLI prints them)."""
    bus_url = f"zmq://127.0.0.1:{free_port_block(3)}"
    with (
        tempfile.TemporaryDirectory(prefix="modelbus-bench-choose-") as tmp,
        service_process(bus_url, Path(tmp) / "data", embedded_bus=True) as running,
    ):
        user, grant = running.user_with_grant()
        timed = runner.run(_run, running.service_uri, bus_url, user, grant, rounds)
    f50, d50, one50 = (_p50(timed[name]) * 1e3 for name in ("forecast", "direct", "largest"))
    overhead = (f50 - d50) / d50
    verdict = "ok" if overhead < TARGET_OVERHEAD else "MISSED"
    return [
        f"end to end, one-day 30-minute query stitched from 3 models ({rounds} rounds each, "
        "ZeroMQ, `modelbus serve` in its own process)",
        f"  forecast (choose + 3 concurrent calls + stitch): p50 {f50:.2f} ms",
        f"  the same 3 calls made directly over the bus:      p50 {d50:.2f} ms",
        f"  chooser overhead {overhead:+.1%} of the direct queries "
        f"(ratio {f50 / d50:.2f}); target < {TARGET_OVERHEAD:.0%}: {verdict}",
        f"  (one round trip against three: next to the single largest call, p50 {one50:.2f} ms, "
        f"the forecast costs {(f50 - one50) / one50:+.1%})",
    ]
