"""Publish from another process, for the cross-process ZeroMQ test.

    python publisher_process.py URL TOPIC COUNT

Publishes frames b"0" .. b"COUNT-1" live on TOPIC, keeps b"kept" persisted on TOPIC/kept, and
closes, which must get every frame to the forwarder before the process exits.
"""

from __future__ import annotations

import sys

import anyio

from transports.zeromq import ZmqTransport


async def main(url: str, topic: str, count: int) -> None:
    transport = ZmqTransport(url)
    await transport.connect()
    try:
        await transport.publish(f"{topic}/kept", b"kept", persist=True)
        for index in range(count):
            await transport.publish(topic, b"%d" % index)
    finally:
        await transport.close()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
