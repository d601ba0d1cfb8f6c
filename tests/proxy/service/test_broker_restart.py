"""A Mosquitto restart under continuous load: no request lost, none run twice, and the service
never reported dead once it is back on the bus.

The broker runs with persistence on, as deployments have it: on its way down it publishes the
service's Last Will (``online: false``) and keeps it across the restart. The heartbeat interval is
20 s, so only the re-announcement on reconnect (bus/liveness/heartbeat.py, transports/mqtt/gate.py)
can make the service look alive again before the next beat; requests in flight survive because the
requester sends them again under the same id (bus/rpc.py) and the service answers a retried id
once. ``query_id`` counts the outputs the service computed: any request run twice shows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tests.fixtures.mosquitto import MosquittoBroker, find_mosquitto
from tests.proxy.conftest import ProxyHarness, wait_until

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

WORKERS = 4
AFTER_RESTART = 40  # predictions still asked once the service is back
LIVENESS_CHECKS = 5  # at least, each a fresh query of the persisted liveness messages


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    directory = tmp_path / "broker"
    directory.mkdir()
    broker = MosquittoBroker(
        find_mosquitto(),
        directory,
        extra_config=f"persistence true\npersistence_location {directory}/\n",
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def double_sum(inputs: list[list[float]]) -> list[float]:
    return [2 * sum(x) for x in inputs]


async def test_a_broker_restart_under_load_loses_and_repeats_nothing(
    persistent_broker: MosquittoBroker, tmp_path: Path
) -> None:
    harness = ProxyHarness(persistent_broker.url, tmp_path / "proxy")
    results: list[tuple[float, float, int, float]] = []  # (sent at, input, query_id, output)
    liveness: list[tuple[bool, str]] = []
    with anyio.fail_after(110):
        async with harness.serving(heartbeat_interval_s=20.0) as service:
            await service.operator.deploy_function("m", "1", double_sum, "doubles")
            await service.operator.wait_ready("m", "1")
            ready_ns = time.time_ns()

            async def beat_after_deploy_landed() -> bool:
                # The early beat after an admin operation must not come after the restart:
                # then it, not the re-announcement, would make the service look alive.
                last_alive_ns = (await service.operator.liveness()).last_alive_ns
                return last_alive_ns is not None and last_alive_ns > ready_ns

            await wait_until(beat_after_deploy_landed, what="the beat after the deploy")
            await service.viewer.predict(model="m", input=[0.0])  # query_id 0
            stop = anyio.Event()

            async def load(worker: int) -> None:
                for index in range(10**6):
                    if stop.is_set():
                        return
                    value = float(worker * 10**6 + index)
                    sent = time.monotonic()
                    reply = await service.viewer.predict(model="m", input=[value], timeout_s=60)
                    results.append((sent, value, reply["query_id"], reply["output"]))

            async with anyio.create_task_group() as tg:
                for worker in range(WORKERS):
                    tg.start_soon(load, worker)
                await wait_until(lambda: _at_least(results, 20), what="load before the restart")
                await anyio.to_thread.run_sync(persistent_broker.restart)
                back = time.monotonic()

                async def answered_after_restart(count: int) -> bool:
                    return sum(sent > back for sent, *_ in results) >= count

                # A request sent after the restart was answered: the service is back on the bus
                # (its reply went out after its reconnect hooks re-announced its birth).
                await wait_until(lambda: answered_after_restart(1), what="served after restart")
                while len(liveness) < LIVENESS_CHECKS or not await answered_after_restart(
                    AFTER_RESTART
                ):
                    state = await service.operator.liveness()
                    liveness.append((state.is_alive, state.reason))
                stop.set()
            final = await service.viewer.predict(model="m", input=[1.0])

    query_ids = [query_id for _, _, query_id, _ in results]
    assert all(output == 2 * value for _, value, _, output in results)
    assert len(set(query_ids)) == len(results)  # no reply given twice
    assert final["query_id"] == len(results) + 1  # nothing computed twice, nothing lost
    assert len(liveness) >= LIVENESS_CHECKS and all(alive for alive, _ in liveness), liveness
    print(f"{len(results)} predictions, {len(liveness)} liveness checks after the restart")


async def _at_least(items: list[object], count: int) -> bool:
    return len(items) >= count
