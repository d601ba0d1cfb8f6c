"""Replies and liveness pinned to the service's key (issue 12 item 4), end to end.

Mallory holds the grant the project once recommended, ``C*P`` on the whole service: she can read
every request on the slots and publish on anyone's reply signal and on ``!meta``. She answers the
operator's prediction first, three times, with 999.0, and persists the service's death. The
operator's client, pinned to the service's key (learnt from the service's own state), drops her
replies and her death: it gets the true 3.0 and still sees the service alive — while a reader
that pins nothing believes her, which shows the attack is real. Covers the pinning in
``container_manager/service.py`` and ``bus/liveness/monitor.py`` (``service_states(origin=…)``).
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from bus import PO_REPLY, PO_REQUEST, BusClient, PayloadObject, reply_uri, service_states
from bus.liveness.heartbeat import STATE, STATUS
from bus.po import PO_STATE, PO_STATUS
from proxy.backend.sandbox import SandboxLimits
from tests.proxy.conftest import ProxyHarness, wait_until
from transports import open_transport


@pytest.mark.slow
async def test_forged_replies_and_a_forged_death_are_ignored(
    memory_harness: ProxyHarness, gates: Path
) -> None:
    harness = memory_harness
    release = gates / "release"
    gate = str(release)

    def slow_three(inputs: list[list[float]]) -> list[float]:
        import os
        import time

        while not os.path.exists(gate):
            time.sleep(0.02)
        return [3.0 for _ in inputs]

    mallory = harness.viewer  # a second granted user, this time with the wide grant
    wide = harness.grant(mallory, f"{harness.service_uri}/*", "C*P")
    with anyio.fail_after(90):
        async with (
            harness.serving(
                heartbeat_interval_s=600.0, sandbox_limits=SandboxLimits(shared_dirs=(gates,))
            ) as service,
            BusClient(open_transport(harness.bus_url), mallory, proofs=[[wide]]) as bus,
            bus.subscribe(harness.slot("predict")) as requests,
        ):
            victim = service.operator
            release.touch()
            await victim.deploy_function("m", "1", slow_three, "doubles")
            await victim.wait_ready("m", "1")
            release.unlink()
            assert await victim.service_key() == harness.owner.public_key

            outputs: list[float] = []

            async def predict() -> None:
                outputs.append((await victim.predict(model="m", input=[1.0]))["output"])

            async with anyio.create_task_group() as task_group:
                task_group.start_soon(predict)
                request = await anext(aiter(requests))
                rid = request.value(PO_REQUEST)["id"]
                forged = PayloadObject.msgpack({"id": rid, "ok": True, "result": {
                    "model": "m", "version": "1", "query_id": 0, "output": 999.0,
                    "default": False}}, PO_REPLY)  # fmt: skip
                target = reply_uri(harness.slot("predict"), request.origin_text)
                for _ in range(3):
                    await bus.publish(target, forged)
                requester = victim.bus._requester
                assert requester is not None

                async def all_dropped() -> bool:
                    return requester.foreign_replies == 3

                await wait_until(all_dropped, what="mallory's three replies dropped")
                assert outputs == []
                release.touch()
            assert outputs == [3.0]

            (status,) = await bus.query(f"{harness.service_uri}/{STATUS}")
            seq = status.value(PO_STATUS)["seq"]
            death = {"online": False, "seq": seq, "ts": seq}
            await bus.publish(
                f"{harness.service_uri}/{STATE}",
                PayloadObject.msgpack(death, PO_STATE),
                persist=True,
            )
            (believed,) = await service_states(bus, harness.service_uri)
            assert (believed.is_alive, believed.reason) == (False, "died")  # the attack works…
            state = await victim.check_alive()  # …but not on a pinned reader
            assert state.is_alive
