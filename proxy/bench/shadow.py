"""The served p50 of an application with and without a shadow release, for ``bench policies``.

``modelbus serve`` runs in a process of its own on its embedded ZeroMQ bus; the client here
deploys the trivial model twice (``bench:1`` serves, ``bench:2`` is the shadow), links it to an
application and measures one request at a time: with a contract of release 1 alone, and with
release 2 added as a shadow (``never`` valid, every request copied). The two are measured in
alternating blocks (the machine is shared: drift hits both alike); the target is a shadow
adding under 5% to the served p50. The contract's log is off in both, so only the copy differs.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bus import BusClient, runner
from container_manager import ServiceClient
from proxy.bench import http as bench_http
from proxy.bench.bus import free_port_block
from proxy.bench.service import service_process
from transports import open_transport

__all__ = ["TARGET_PCT", "run_served_bench"]

ROW = [1.5, 2.0, 3.0]
TARGET_PCT = 5.0
ALONE = {"releases": [{"version": "1"}]}
SHADOWED = {"releases": [{"version": "1"}, {"version": "2", "validity": {"gate": "never"}}]}


async def _measure(bus_url: str, data_dir: Path, count: int, blocks: int) -> dict[str, list[float]]:
    with service_process(bus_url, data_dir, embedded_bus=True) as service:
        user, grant = service.user_with_grant()
        async with BusClient(open_transport(bus_url), user, proofs=[[grant]]) as bus:
            client = ServiceClient(bus, service.service_uri)
            await client.register_application("bench-app", "doubles", "0", 10_000_000)
            for version in ("1", "2"):
                await client.deploy_function("bench", version, bench_http.model, "doubles")
                await client.wait_ready("bench", version)
            await client.link_model_to_app("bench-app", "bench")
            samples: dict[str, list[float]] = {"alone": [], "shadowed": []}
            for _ in range(blocks):
                for label, contract in (("alone", ALONE), ("shadowed", SHADOWED)):
                    await client.set_route("bench-app", contract)
                    for _ in range(20):  # warm the path
                        await client.predict_routed(app="bench-app", input=ROW)
                    for _ in range(count // blocks):
                        began = time.perf_counter()
                        await client.predict_routed(app="bench-app", input=ROW)
                        samples[label].append(time.perf_counter() - began)
            shown = await client.show_route("bench-app")
            samples["shadows_run"] = [float(shown["counters"]["shadows_run"])]
    return samples


def run_served_bench(count: int = 1000, blocks: int = 5) -> list[str]:
    """The served-p50 lines (the CLI prints them after the decision table)."""
    with tempfile.TemporaryDirectory(prefix="modelbus-bench-") as tmp:
        bus_url = f"zmq://127.0.0.1:{free_port_block(3)}"
        samples = runner.run(_measure, bus_url, Path(tmp) / "data", count, blocks)
    alone = statistics.median(samples["alone"]) * 1e3
    shadowed = statistics.median(samples["shadowed"]) * 1e3
    added = (shadowed / alone - 1) * 100
    verdict = "ok" if added < TARGET_PCT else "MISSED"
    return [
        f"served p50 over the bus, {len(samples['alone'])} requests each, {blocks} alternating "
        "blocks (modelbus serve, embedded ZeroMQ bus)",
        f"{'contract, release 1 alone':<44}  {alone:>8.3f} ms",
        f"{'contract, + a shadow of every request':<44}  {shadowed:>8.3f} ms  "
        f"{added:+.1f}%  target < +{TARGET_PCT:g}%  {verdict}",
        f"shadow copies run meanwhile: {samples['shadows_run'][0]:.0f}",
    ]
