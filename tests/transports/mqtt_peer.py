"""Another process on the bus, for the MQTT tests (run as ``python mqtt_peer.py MODE URL ...``).

will URL TOPIC FRAME        connect with a Will (keepalive 2 s), print "ready", wait to be killed
will-close URL TOPIC FRAME  connect with a Will, print "ready", close cleanly, print "closed"
publish URL TOPIC COUNT     publish frames b"0" .. b"COUNT-1" at QoS 1, print "done"
raw URL TOPIC FRAME         publish on any MQTT topic (even outside the bus grammar) with paho
"""

from __future__ import annotations

import asyncio
import sys

from bus.transport import Will
from transports.mqtt import MqttTransport


def say(word: str) -> None:
    print(word, flush=True)


async def with_will(url: str, topic: str, frame: str, *, close: bool) -> None:
    transport = MqttTransport(url, keepalive_s=2)
    await transport.connect(will=Will(topic, frame.encode()))
    say("ready")
    if close:
        await transport.close()
        say("closed")
        return
    await asyncio.Event().wait()


async def publish(url: str, topic: str, count: int) -> None:
    transport = MqttTransport(url)
    await transport.connect()
    for index in range(count):
        await transport.publish(topic, str(index).encode())
    await transport.close()
    say("done")


def publish_raw(url: str, topic: str, frame: str) -> None:
    from urllib.parse import urlsplit

    from paho.mqtt import client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    parts = urlsplit(url)
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    client.loop_start()
    client.publish(topic, frame.encode(), qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
    say("done")


def main(argv: list[str]) -> None:
    mode, url, topic, arg = argv
    if mode == "will":
        asyncio.run(with_will(url, topic, arg, close=False))
    elif mode == "will-close":
        asyncio.run(with_will(url, topic, arg, close=True))
    elif mode == "publish":
        asyncio.run(publish(url, topic, int(arg)))
    elif mode == "raw":
        publish_raw(url, topic, arg)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
