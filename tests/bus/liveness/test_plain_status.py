"""The plain-JSON status on MQTT: retained, readable by a plain paho subscriber with no code of
ours, ``online`` true while the service beats and false after a clean shutdown."""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
from paho.mqtt import subscribe

from bus import Heartbeat
from bus.liveness import plain_status
from bus.liveness.plain_status import PLAIN_STATUS
from tests.bus.helpers import Namespace, connect


def read_retained(url: str, topic: str) -> Any:
    """One retained message on ``topic``, read by paho's blocking helper (a generic tool)."""
    split = urlsplit(url)
    message = subscribe.simple(topic, hostname=split.hostname, port=split.port, retained=True)
    return json.loads(message.payload)


@pytest.mark.mqtt
async def test_a_plain_paho_subscriber_reads_the_retained_json(mosquitto_url: str) -> None:
    namespace = Namespace()
    service = namespace.uri("svc", "thermal")
    topic = f"{service}/{PLAIN_STATUS}"
    member = namespace.member("svc/*", "P")
    heartbeat = Heartbeat(service, status=lambda: {"models": [{"model": "m"}]}, plain_json=True)
    async with connect(mosquitto_url, member, will=heartbeat.will()) as client:
        await client.require_task_group().start(heartbeat.run, client)
        with anyio.fail_after(10):
            document = await anyio.to_thread.run_sync(read_retained, mosquitto_url, topic)
    assert document["service"] == service and document["online"] is True
    assert document["seq"] == heartbeat.seq and document["authenticated"] is False
    assert document["interval_s"] == heartbeat.interval_s
    assert document["status"] == {"models": [{"model": "m"}]}
    assert document["time"].endswith("Z") and isinstance(document["ts"], int)

    with anyio.fail_after(10):
        gone = await anyio.to_thread.run_sync(read_retained, mosquitto_url, topic)
    assert gone["online"] is False and gone["seq"] == heartbeat.seq


def test_encode_is_json_for_any_status_a_service_builds() -> None:
    status = {"seq": 1, "ts": 10**18, "uptime_s": 1.5, "blob": b"abc", "nan": math.nan, "x": {1}}
    document = json.loads(plain_status.encode("ns/s", status, online=True))
    assert document["status"] == {"blob": "<3 bytes>", "nan": None, "x": "{1}"}
    assert document["time"] == "2001-09-09T01:46:40.000000Z"
    assert (document["seq"], document["uptime_s"]) == (1, 1.5)
