"""What a client says when a live service's Will was published — as Mosquitto does for every
client when the broker itself shuts down: ``check_alive`` still refuses (the state says offline),
but says what is true: the service beat moments ago, a broker restart publishes Wills, and the
service announces itself again once reconnected — not a bare "died". A service whose heartbeat
is stale as well is reported as before.

Covers the message of container_manager/service.py's check_alive (issue 11, item 4).
"""

from __future__ import annotations

import re

import anyio
import pytest

from bus import BusClient
from bus.errors import TransportError
from bus.liveness.heartbeat import STATE
from bus.liveness.monitor import evaluate
from bus.po import PO_STATE, PayloadObject
from container_manager.service import _why_dead
from tests.proxy.conftest import ProxyHarness
from transports import open_transport


async def test_a_will_published_while_the_service_beats_is_explained(
    memory_harness: ProxyHarness,
) -> None:
    with anyio.fail_after(30):
        async with memory_harness.serving() as service:
            alive = await service.operator.check_alive()
            # What the broker does on its way down: the service's Will, persisted.
            will = {"online": False, "seq": alive.seq, "ts": alive.seq}
            async with BusClient(
                open_transport(memory_harness.bus_url), memory_harness.owner
            ) as bus:
                await bus.publish(
                    f"{memory_harness.service_uri}/{STATE}",
                    PayloadObject.msgpack(will, PO_STATE),
                    persist=True,
                )
            with pytest.raises(TransportError) as refused:
                await service.operator.check_alive()
    assert refused.value.details["reason"] == "died"
    assert "if the broker just restarted" in refused.value.message
    assert re.search(r"yet it beat \d+ s ago", refused.value.message), refused.value.message


def test_a_stale_death_is_reported_as_it_is() -> None:
    now_ns = 100 * 10**9
    dead = evaluate(
        "ns/s.modelbus/_",
        {"ts": now_ns - 40 * 10**9},
        {"online": False, "seq": 7},
        {"seq": 7},
        now_ns=now_ns,
    )
    assert dead.reason == "died"
    assert _why_dead(dead) == "died"  # its last beat is old: nothing suggests it lives
