"""The proxy's Prometheus /metrics, parsed with prometheus_client's own parser: its counters move
as requests are answered and frames rejected, and the recording hooks keep labels bounded.

Covers proxy/metrics/recording.py and proxy/service/metrics.py (the service's sources).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bus import BusClient, Entity, PayloadObject
from bus import envelope as envelopes
from bus.errors import BusError
from bus.liveness.plain_status import PLAIN_STATUS
from bus.po import PO_REQUEST
from proxy.metrics.recording import LATENCY_BUCKETS, ProxyMetrics, rejection_reason
from tests.bus.liveness.test_plain_status import read_retained
from tests.proxy.conftest import ProxyHarness, wait_until
from transports import open_transport


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``url``, keyed by name and sorted labels."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def forge_request(harness: ProxyHarness) -> None:
    """A request on slot/predict from an entity nobody granted anything: a grant rejection."""
    stranger = Entity.generate(comment="stranger")
    uri = harness.slot("predict")
    request = PayloadObject.msgpack({"id": "x1", "body": {"op": "predict"}}, PO_REQUEST)
    async with BusClient(open_transport(harness.bus_url), stranger) as bus:
        await bus.transport.publish(uri, envelopes.seal(stranger, uri, (request,)))


@pytest.mark.slow
async def test_metrics_move_with_requests_and_rejections(memory_harness: ProxyHarness) -> None:
    async with memory_harness.serving(metrics_port=0) as service:
        url = service.info.metrics_url
        assert url is not None and url.startswith("http://127.0.0.1:")
        before = await scrape(url)
        assert value(before, "modelbus_heartbeats_sent_total") >= 1
        assert value(before, "modelbus_rejections_total", reason="grant") == 0

        await service.operator.call("admin", "model.list")
        await service.operator.call("admin", "model.list")
        with pytest.raises(BusError) as refused:
            await service.operator.call("admin", "no.such.op")
        assert refused.value.code == "invalid_request"
        await forge_request(memory_harness)

        async def rejected() -> bool:
            return value(await scrape(url), "modelbus_rejections_total", reason="grant") >= 1

        await wait_until(rejected, timeout_s=10, what="the forged request is counted")
        after = await scrape(url)

    ok = {"slot": "admin", "op": "model.list", "outcome": "ok"}
    assert value(after, "modelbus_requests_total", **ok) == 2
    unknown = {"slot": "admin", "op": "unknown", "outcome": "invalid_request"}
    assert value(after, "modelbus_requests_total", **unknown) == 1
    count = value(after, "modelbus_request_duration_seconds_count", slot="admin", op="model.list")
    assert count == 2
    inf = {"slot": "admin", "op": "model.list", "le": "+Inf"}
    assert value(after, "modelbus_request_duration_seconds_bucket", **inf) == 2
    assert value(after, "modelbus_rejections_total", reason="grant") == 1
    assert value(after, "modelbus_replicas", state="ready") == 0
    assert value(after, "modelbus_bus_reconnects_total") == 0


def test_recording_keeps_labels_bounded_and_buckets_cumulative() -> None:
    metrics = ProxyMetrics()
    metrics.record("predict", "predict", "ok", 0.0004)
    metrics.record("predict", "predict", "ok", 3.0)
    metrics.record("predict", "predict", "made-up code", 0.01)
    metrics.record("deploy", "upload.chunk", "ok", 0.002, attachment_bytes=1000)
    metrics.record("deploy", "upload.commit", "ok", 0.002)
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    outcomes = {s.labels["outcome"] for s in families["modelbus_requests"].samples}
    assert outcomes == {"ok", "error"}  # an unknown code is not a new label value
    buckets = [
        s.value
        for s in families["modelbus_request_duration_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["op"] == "predict"
    ]
    assert len(buckets) == len(LATENCY_BUCKETS) + 1
    assert buckets == sorted(buckets) and buckets[0] == 1 and buckets[-1] == 3
    [chunk] = families["modelbus_request_attachment_bytes"].samples
    assert chunk.value == 1000
    uploads = {s.labels["outcome"]: s.value for s in families["modelbus_uploads"].samples}
    assert uploads == {"committed": 1, "aborted": 0}
    assert metrics.total == 5
    assert rejection_reason("bad_signature") == "signature"
    assert rejection_reason("replayed_nonce") == "replay"
    assert rejection_reason(str(time.time())) == "other"


@pytest.mark.mqtt
@pytest.mark.slow
async def test_the_service_keeps_a_plain_json_status_on_mqtt(
    mosquitto_url: str, tmp_path: Path
) -> None:
    harness = ProxyHarness(mosquitto_url, tmp_path / "proxy")
    topic = f"{harness.service_uri}/{PLAIN_STATUS}"
    async with harness.serving(heartbeat_interval_s=0.2):
        with anyio.fail_after(10):
            document = await anyio.to_thread.run_sync(read_retained, mosquitto_url, topic)
    assert document["service"] == harness.service_uri and document["online"] is True
    assert document["authenticated"] is False and document["interval_s"] == 0.2
    facts = document["status"]
    assert facts["models"] == [] and facts["uploads"] == []
    assert facts["requests_per_s"] >= 0 and facts["version"]
