"""The dashboard's page in a real headless Chromium: services appear with their status, a forged
heartbeat shows as untrusted, a SIGKILLed service turns dead (Last Will on MQTT, staleness on
ZeroMQ), and the page says so while the broker is down and recovers when it returns."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from bus import PayloadObject
from bus import envelope as envelopes
from bus.liveness.heartbeat import LASTALIVE, STATUS
from bus.po import PO_METADATA, PO_STATUS
from tests.bus.helpers import Namespace, connect, new_entity
from tests.fixtures.mosquitto import MosquittoBroker
from tests.proxy.dashboard.helpers import (
    beating,
    liveness_process,
    page_of,
    running_dashboard,
    until,
)

pytestmark = pytest.mark.slow


def status_of(models: list[tuple[str, str, int, int, int]], rate: float) -> dict[str, Any]:
    return {
        "version": "0.1.0",
        "requests_per_s": rate,
        "models": [
            {
                "model": model,
                "version": version,
                "ready": ready > 0,
                "replicas": ready + starting + crashed,
                "replica_states": {"ready": ready, "starting": starting, "failed": crashed},
                "queued": 3 * starting,
            }
            for model, version, ready, starting, crashed in models
        ],
        "uploads": [{"name": "thermal-v3.tar", "received_bytes": 61_000_000, "size": 100_000_000}]
        if rate > 10
        else [],
    }


async def card_state(page: Any, service: str) -> str | None:
    card = page.locator(f'article[data-service="{service}"]')
    if await card.count() == 0:
        return None
    return str(await card.get_attribute("data-state"))


async def wait_card(page: Any, service: str, state: str, *, timeout_s: float) -> None:
    await page.wait_for_selector(
        f'article[data-service="{service}"][data-state="{state}"]', timeout=timeout_s * 1000
    )


def forged(service: str, suffix: str = LASTALIVE) -> bytes:
    """A well-formed, signed lastalive (or status) from an entity granted nothing."""
    rogue = new_entity("rogue")
    uri = f"{service}/{suffix}"
    po = PayloadObject.msgpack({"val": "now", "ts": time.time_ns()}, PO_METADATA)
    if suffix == STATUS:
        po = PayloadObject.msgpack({"seq": 1, "ts": time.time_ns(), "models": []}, PO_STATUS)
    return envelopes.seal(rogue, uri, (po,), persist=True, proof=())


async def test_services_appear_and_a_forged_heartbeat_is_untrusted(
    zmq_bus_url: str, namespace: Namespace, chromium: str, tmp_path: Path
) -> None:
    services = namespace.member("*", "P")
    a, b = namespace.uri("building-a"), namespace.uri("building-b")
    fleet = {
        f"{a}/thermal": status_of([("thermal", "3", 2, 0, 0), ("occupancy", "12", 1, 1, 0)], 42.5),
        f"{a}/hvac-forecast": status_of([("hvac", "7", 3, 0, 1)], 8.2),
        f"{b}/lighting": status_of([("lux", "1", 1, 0, 0)], 0.4),
    }
    async with (
        running_dashboard(zmq_bus_url, namespace.as_member, namespace.uri("*")) as board,
        beating(zmq_bus_url, services, f"{a}/thermal", lambda: fleet[f"{a}/thermal"]),
        beating(zmq_bus_url, services, f"{a}/hvac-forecast", lambda: fleet[f"{a}/hvac-forecast"]),
        beating(zmq_bus_url, services, f"{b}/lighting", lambda: fleet[f"{b}/lighting"]),
        page_of(board.url, chromium) as page,
    ):
        for service in fleet:
            await wait_card(page, service, "alive", timeout_s=10)
        rogue = f"{b}/rogue-meter"
        async with connect(zmq_bus_url, services) as forger:
            await forger.transport.publish(f"{rogue}/{LASTALIVE}", forged(rogue))
            await wait_card(page, rogue, "untrusted", timeout_s=10)
            # a genuine service's beat with a broken signature is untrusted too, never alive
            frame = bytearray(forged(f"{a}/thermal", STATUS))
            frame[-5] ^= 0xFF
            await forger.transport.publish(f"{a}/thermal/{STATUS}", bytes(frame))
            await wait_card(page, f"{a}/thermal", "untrusted", timeout_s=10)
        text = await page.inner_text("main")
        assert "thermal:3" in text and "hvac:7" in text and "thermal-v3.tar 61 %" in text
        assert await page.locator("#banner").is_hidden()
        await page.screenshot(path=str(tmp_path / "fleet.png"), full_page=True)
        assert board.fleet.records[rogue].state == "untrusted"


@pytest.mark.mqtt
async def test_a_killed_service_turns_dead_by_its_last_will_on_mqtt(
    mosquitto_url: str, namespace: Namespace, chromium: str, tmp_path: Path
) -> None:
    service = namespace.uri("site", "killed")
    member = namespace.member("site/*", "P")
    async with (
        running_dashboard(mosquitto_url, namespace.as_member, namespace.uri("*")) as board,
        # a long period: only the Will can make it dead within the test
        liveness_process(mosquitto_url, member, service, 60.0, tmp_path) as process,
        page_of(board.url, chromium) as page,
    ):
        await wait_card(page, service, "alive", timeout_s=10)
        process.kill()  # SIGKILL: no clean shutdown, the broker publishes the Will
        await wait_card(page, service, "dead", timeout_s=15)
        reason = await page.locator(f'article[data-service="{service}"] .reason').inner_text()
        assert reason == "Last Will"
        await page.screenshot(path=str(tmp_path / "will.png"))


@pytest.mark.mqtt
async def test_instances_show_under_their_service_and_die_by_their_wills(
    mosquitto_url: str, namespace: Namespace, chromium: str, tmp_path: Path
) -> None:
    """Two named instances of one service: one line each in the service's card; SIGKILL one and
    it turns dead by its Will while the service stays alive; SIGKILL both and the service dies."""
    service = namespace.uri("site", "thermal")
    member = namespace.member("site/*", "C*P")  # C: each lists its siblings in its plain JSON
    card = f'article[data-service="{service}"]'

    async def line(page: Any, instance: str, state: str) -> None:
        selector = f'{card} .instance[data-instance="{instance}"][data-state="{state}"]'
        await page.wait_for_selector(selector, timeout=15_000)

    async with (
        running_dashboard(mosquitto_url, namespace.as_member, namespace.uri("*")) as board,
        liveness_process(mosquitto_url, member, service, 60.0, tmp_path, instance="a") as a,
        liveness_process(mosquitto_url, member, service, 60.0, tmp_path, instance="b") as b,
        page_of(board.url, chromium) as page,
    ):
        await line(page, "a", "alive")
        await line(page, "b", "alive")
        await wait_card(page, service, "alive", timeout_s=10)
        assert await page.locator(f"{card} > .reason").inner_text() == "2 of 2 instances alive"
        assert await page.locator(f"{card} .instance").count() == 2
        assert await page.locator(f'{card} .instance[data-instance="a"] .iage').inner_text() != (
            "never"
        )
        await page.screenshot(path=str(tmp_path / "instances.png"))

        a.kill()  # SIGKILL: the broker publishes a's Will
        await line(page, "a", "dead")
        reason = f'{card} .instance[data-instance="a"] .ireason'
        assert await page.locator(reason).inner_text() == "Last Will"
        assert await card_state(page, service) == "alive"
        assert await page.locator(f"{card} > .reason").inner_text() == "1 of 2 instances alive"
        await page.screenshot(path=str(tmp_path / "one-instance-dead.png"))

        b.kill()
        await wait_card(page, service, "dead", timeout_s=15)
        assert await page.locator(f"{card} > .reason").inner_text() == "no instance alive"
        assert [row["instance"] for row in board.fleet.records[service].row()["instances"]] == [
            "a",
            "b",
        ]


async def test_a_killed_service_turns_dead_by_staleness_on_zeromq(
    zmq_bus_url: str, namespace: Namespace, chromium: str, tmp_path: Path
) -> None:
    service = namespace.uri("site", "hung")
    member = namespace.member("site/*", "P")
    async with (
        running_dashboard(zmq_bus_url, namespace.as_member, namespace.uri("*")) as board,
        liveness_process(zmq_bus_url, member, service, 0.3, tmp_path) as process,
        page_of(board.url, chromium) as page,
    ):
        await wait_card(page, service, "alive", timeout_s=10)
        process.kill()  # ZeroMQ has no Will: three missed periods (0.9 s) make it dead
        await wait_card(page, service, "dead", timeout_s=10)
        reason = await page.locator(f'article[data-service="{service}"] .reason').inner_text()
        assert reason == "missed heartbeats"


async def test_a_clean_shutdown_is_retired(
    zmq_bus_url: str, namespace: Namespace, chromium: str, tmp_path: Path
) -> None:
    service = namespace.uri("site", "leaving")
    member = namespace.member("site/*", "P")
    async with (
        running_dashboard(zmq_bus_url, namespace.as_member, namespace.uri("*")) as board,
        page_of(board.url, chromium) as page,
    ):
        async with beating(zmq_bus_url, member, service, dict, interval_s=0.3):
            await wait_card(page, service, "alive", timeout_s=10)
        await wait_card(page, service, "retired", timeout_s=10)
        assert board.fleet.records[service].reason == "clean shutdown"


@pytest.mark.mqtt
async def test_the_page_says_when_the_bus_is_down_and_recovers(
    mosquitto: MosquittoBroker, namespace: Namespace, chromium: str, tmp_path: Path
) -> None:
    mosquitto.start()
    service = namespace.uri("site", "steady")
    member = namespace.member("site/*", "P")
    async with (
        running_dashboard(mosquitto.url, namespace.as_member, namespace.uri("*")) as board,
        beating(mosquitto.url, member, service, dict, interval_s=0.5),
        page_of(board.url, chromium) as page,
    ):
        await wait_card(page, service, "alive", timeout_s=10)
        banner = page.locator("#banner")
        try:
            mosquitto.stop()
            await banner.wait_for(state="visible", timeout=10_000)
            assert "Bus link DOWN" in await banner.inner_text()
            await page.screenshot(path=str(tmp_path / "bus-down.png"))
            # (Mosquitto publishes its clients' Wills as it stops: the service may show dead
            # "Last Will" now, and alive again with its first beat after the broker returns.)
        finally:
            mosquitto.start()
        await banner.wait_for(state="hidden", timeout=20_000)
        await wait_card(page, service, "alive", timeout_s=20)
        stamp = board.fleet.records[service].last_alive_ns
        await until(
            lambda: board.fleet.records[service].last_alive_ns != stamp,
            timeout_s=10,
            what="a heartbeat arrives after the broker returned",
        )
