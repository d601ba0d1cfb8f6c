"""The dashboard's HTTP side without a browser: /api/services, the fleet's /metrics parsed with
prometheus_client's parser, the event stream's first event, and the token rule.

Covers proxy/dashboard/app.py with proxy/dashboard/monitor.py (the monitor feeding the app).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bus.errors import InvalidRequest
from proxy.dashboard import Dashboard, Fleet, FleetMonitor
from tests.bus.helpers import Namespace, connect, memory_url
from tests.proxy.dashboard.helpers import beating, running_dashboard, until


async def get(url: str, **headers: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, await response.text()


def up_samples(text: str) -> dict[str, float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "modelbus_service_up":
                found[sample.labels["service"]] = sample.value
    return found


async def test_api_and_metrics_follow_the_fleet(namespace: Namespace) -> None:
    url = memory_url()
    service = namespace.uri("svc", "a")
    member = namespace.member("svc/*", "P")
    async with running_dashboard(url, namespace.as_member, namespace.uri("*")) as board:
        async with beating(url, member, service, lambda: {"models": []}, interval_s=0.2):
            await until(lambda: service in board.fleet.records, timeout_s=10, what="seen")
            await until(
                lambda: board.fleet.records[service].state == "alive", timeout_s=10, what="alive"
            )
            status, text = await get(board.url + "api/services")
            assert status == 200
            data = json.loads(text)
            [row] = data["rows"]
            assert (row["service"], row["state"], row["interval_s"]) == (service, "alive", 0.2)
            assert data["link"]["up"] is True and data["counts"]["alive"] == 1
            status, text = await get(board.url + "metrics")
            assert status == 200 and up_samples(text) == {service: 1.0}
        await until(
            lambda: board.fleet.records[service].state == "retired", timeout_s=10, what="retired"
        )
        _, text = await get(board.url + "metrics")
        assert up_samples(text) == {service: 0.0}
        families = {f.name: f for f in text_string_to_metric_families(text)}
        states = {s.labels["state"]: s.value for s in families["modelbus_services"].samples}
        assert states["retired"] == 1 and states["alive"] == 0
        [link] = families["modelbus_dashboard_bus_up"].samples
        assert link.value == 1


async def test_metrics_and_rows_carry_named_instances(namespace: Namespace) -> None:
    url = memory_url()
    service = namespace.uri("svc", "a")
    member = namespace.member("svc/*", "P")
    async with (
        running_dashboard(url, namespace.as_member, namespace.uri("*")) as board,
        beating(url, member, service, dict, interval_s=0.2, instance="eu-1"),
    ):
        await until(
            lambda: (
                service in board.fleet.records and board.fleet.records[service].state == "alive"
            ),
            timeout_s=10,
            what="alive",
        )
        _, text = await get(board.url + "api/services")
        [row] = json.loads(text)["rows"]
        _, text = await get(board.url + "metrics")
    assert row["reason"] == "1 of 1 instances alive"
    assert [(i["instance"], i["state"]) for i in row["instances"]] == [("eu-1", "alive")]
    families = {f.name: f for f in text_string_to_metric_families(text)}
    [sample] = families["modelbus_instance_up"].samples
    assert sample.labels == {"service": service, "instance_name": "eu-1"} and sample.value == 1


async def test_the_event_stream_starts_with_a_snapshot(namespace: Namespace) -> None:
    url = memory_url()
    async with (
        running_dashboard(url, namespace.as_member, namespace.uri("*")) as board,
        aiohttp.ClientSession() as session,
        session.get(board.url + "events") as response,
    ):
        assert response.headers["Content-Type"] == "text/event-stream"
        with anyio.fail_after(10):
            assert await response.content.readline() == b"event: snapshot\n"
            data = (await response.content.readline()).decode()
        snapshot: dict[str, Any] = json.loads(data.removeprefix("data: "))
        assert snapshot["rows"] == [] and snapshot["pattern"] == namespace.uri("*")


async def test_a_token_guards_the_data_but_not_the_page(namespace: Namespace) -> None:
    url = memory_url()
    monitor = FleetMonitor(lambda: connect(url, namespace.as_member), namespace.uri("*"), Fleet())
    board = Dashboard(monitor, token="s3cret")
    async with anyio.create_task_group() as task_group:
        port = await task_group.start(board.run, "127.0.0.1", 0)
        base = f"http://127.0.0.1:{port}/"
        assert (await get(base))[0] == 200
        assert (await get(base + "static/dashboard.js"))[0] == 200
        assert (await get(base + "api/services"))[0] == 401
        assert (await get(base + "metrics?token=wrong"))[0] == 401
        assert (await get(base + "api/services?token=s3cret"))[0] == 200
        assert (await get(base + "metrics", Authorization="Bearer s3cret"))[0] == 200
        assert (await get(base + "static/app.py"))[0] == 404  # only the shipped assets
        task_group.cancel_scope.cancel()


async def test_binding_beyond_loopback_needs_a_token(namespace: Namespace) -> None:
    url = memory_url()
    monitor = FleetMonitor(lambda: connect(url, namespace.as_member), namespace.uri("*"), Fleet())
    with pytest.raises(InvalidRequest, match="--token"):
        await Dashboard(monitor).run("0.0.0.0", 0)


async def test_repeats_are_not_verified_again_but_changes_are(namespace: Namespace) -> None:
    url = memory_url()
    service = namespace.uri("svc", "a")
    member = namespace.member("svc/*", "P")
    async with running_dashboard(url, namespace.as_member, namespace.uri("*")) as board:
        monitor = board.board.monitor
        async with beating(url, member, service, dict, interval_s=0.05):
            # each beat: a lastalive (the status says the same) and a repeated birth skipped
            await until(lambda: monitor.skipped >= 20, timeout_s=10, what="repeats skipped")
            assert board.fleet.records[service].state == "alive"
            # per beat one verified (the status), two skipped: more skipped than verified
            assert monitor.skipped > monitor.messages
        # the clean shutdown's death differs from the births: verified and shown
        await until(
            lambda: board.fleet.records[service].state == "retired", timeout_s=10, what="retired"
        )
