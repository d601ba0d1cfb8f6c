"""A service that only announces liveness, run as a subprocess by
tests/bus/liveness/test_heartbeat.py.

    python tests/bus/liveness_process.py BUS_URL ENTITY_FILE CHAIN_FILE SERVICE_URI INTERVAL_S

It connects as the entity with the chain, registers the heartbeat's Will, beats every
INTERVAL_S, prints ``ready <seq>`` on stdout once the first beat is out, and runs until killed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from bus import BusClient, Entity, Heartbeat, decode_chain
from transports import open_transport


async def main(url: str, entity_file: str, chain_file: str, service: str, interval: str) -> None:
    entity = Entity.load(entity_file)
    chain = decode_chain(Path(chain_file).read_bytes())
    heartbeat = Heartbeat(service, interval_s=float(interval), status=lambda: {"role": "test"})
    client = BusClient(open_transport(url), entity, proofs=[chain], will=heartbeat.will())
    async with client:
        await client.require_task_group().start(heartbeat.run, client)
        print(f"ready {heartbeat.seq}", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    anyio.run(main, *sys.argv[1:])
