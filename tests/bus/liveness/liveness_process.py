"""A service that only announces liveness, run as a subprocess by
tests/bus/liveness/test_heartbeat.py, tests/bus/liveness/test_instances.py and the dashboard's
tests.

    python tests/bus/liveness_process.py BUS_URL ENTITY_FILE CHAIN_FILE SERVICE_URI INTERVAL_S
                                         [INSTANCE]

It connects as the entity with the chain, registers the heartbeat's Will, beats every
INTERVAL_S, prints ``ready <seq>`` on stdout once the first beat is out, and runs until killed.
With INSTANCE it beats as that named instance of the service and, on MQTT, publishes the plain
JSON status listing the instances it sees (as ``modelbus serve --instance`` does; the chain must
then also let it consume ``SERVICE_URI/!meta/instances/+/+``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from bus import BusClient, Entity, Heartbeat, decode_chain
from bus.liveness import InstanceView
from transports import open_transport


async def main(
    url: str,
    entity_file: str,
    chain_file: str,
    service: str,
    interval: str,
    instance: str | None = None,
) -> None:
    entity = Entity.load(entity_file)
    chain = decode_chain(Path(chain_file).read_bytes())
    siblings = InstanceView(service) if instance and url.startswith("mqtt://") else None
    heartbeat = Heartbeat(
        service,
        interval_s=float(interval),
        status=lambda: {"role": "test"},
        plain_json=siblings is not None,
        instance=instance,
        instances=siblings.snapshot if siblings else None,
    )
    client = BusClient(open_transport(url), entity, proofs=[chain], will=heartbeat.will())
    async with client:
        if siblings is not None:
            await client.require_task_group().start(siblings.run, client)
        await client.require_task_group().start(heartbeat.run, client)
        print(f"ready {heartbeat.seq}", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    if len(sys.argv) not in (6, 7):
        sys.exit(__doc__)
    anyio.run(main, *sys.argv[1:])
