"""The raw baselines of ``modelbus bench bus``: paho and pyzmq with none of our code in between.

The one sanctioned importer of paho and zmq outside the transports (and the worker channel): a
baseline must not go through our code. Both ends run on their own threads in this process.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import zmq
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion

from proxy.bench.bus_results import (
    HWM,
    REPLY_TIMEOUT_S,
    START_TIMEOUT_S,
    WARMUP,
    BenchSettings,
    Side,
)

__all__ = [
    "raw_mqtt_rtt",
    "raw_mqtt_stream",
    "raw_receive",
    "raw_zmq_rtt",
    "raw_zmq_stream",
]


# -- raw paho ------------------------------------------------------------------------------------


class _Paho:
    """One raw paho client: threaded network loop, MQTT 5, TCP_NODELAY, connected."""

    def __init__(self, url: str, qos: int, on_message: Callable[[bytes], None]) -> None:
        parts = urlsplit(url)
        self.qos = qos
        self._acks: queue.SimpleQueue[str] = queue.SimpleQueue()
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-{uuid.uuid4().hex[:12]}",
            protocol=paho.MQTTv5,
        )
        client.on_socket_open = _no_delay
        client.on_message = lambda _client, _userdata, message: on_message(bytes(message.payload))
        client.on_connect = lambda *_: self._acks.put("connect")
        client.on_subscribe = lambda *_: self._acks.put("subscribe")
        client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
        client.loop_start()
        self.client = client
        self._expect("connect")

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=self.qos)
        self._expect("subscribe")

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=self.qos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _expect(self, what: str) -> None:
        try:
            got = self._acks.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            raise RuntimeError(f"raw paho: no {what} acknowledgement") from None
        if got != what:
            raise RuntimeError(f"raw paho: expected {what}, got {got}")


def _no_delay(client: Any, userdata: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def raw_mqtt_rtt(url: str, topic: str, settings: BenchSettings) -> list[int]:
    replies: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    asked, answered = f"{topic}/request", f"{topic}/reply"
    server = _Paho(url, settings.qos, lambda payload: server.publish(answered, payload))
    requester = _Paho(url, settings.qos, replies.put)
    try:
        server.subscribe(asked)
        requester.subscribe(answered)
        body = os.urandom(settings.size)
        rtts = []
        for index in range(WARMUP + settings.requests):
            started = time.perf_counter_ns()
            requester.publish(asked, body)
            replies.get(timeout=REPLY_TIMEOUT_S)
            if index >= WARMUP:
                rtts.append(time.perf_counter_ns() - started)
        return rtts
    finally:
        requester.close()
        server.close()


class _Counter:
    """Counts a raw stream's arrivals on the library's thread."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.received = 0
        self.last = 0.0
        self.done = threading.Event()

    def arrived(self, _payload: bytes = b"") -> None:
        self.received += 1
        self.last = time.perf_counter()
        if self.received >= self.count:
            self.done.set()

    def wait(self, idle_s: float) -> None:
        seen = -1
        while not self.done.is_set() and self.received != seen:
            seen = self.received
            self.done.wait(idle_s)

    def side(self, started: float) -> Side:
        return Side(received=self.received, sent=self.count, elapsed_s=self.last - started)


def raw_mqtt_stream(url: str, topic: str, settings: BenchSettings) -> Side:
    counter = _Counter(settings.count)
    subscriber = _Paho(url, settings.qos, counter.arrived)
    publisher = _Paho(url, settings.qos, lambda payload: None)
    try:
        subscriber.subscribe(f"{topic}/stream")
        payload = os.urandom(settings.size)
        started = time.perf_counter()
        for _ in range(settings.count):
            publisher.publish(f"{topic}/stream", payload)
        counter.wait(settings.idle_s)
        return counter.side(started)
    finally:
        publisher.close()
        subscriber.close()


# -- raw pyzmq through the forwarder --------------------------------------------------------------


def _zmq_socket(context: zmq.Context[Any], kind: int, url: str, offset: int) -> Any:
    parts = urlsplit(url)
    sock = context.socket(kind)
    for option, value in ((zmq.LINGER, 0), (zmq.SNDHWM, HWM), (zmq.RCVHWM, HWM)):
        sock.setsockopt(option, value)  # before connect, or they are ignored
    sock.connect(f"tcp://{parts.hostname}:{(parts.port or 7700) + offset}")
    return sock


def raw_zmq_rtt(url: str, topic: str, settings: BenchSettings) -> list[int]:
    asked, answered = f"{topic}/request".encode(), f"{topic}/reply".encode()
    context: zmq.Context[Any] = zmq.Context()
    stop = threading.Event()
    server_sub = _zmq_socket(context, zmq.SUB, url, 1)
    server_sub.subscribe(asked)
    server_pub = _zmq_socket(context, zmq.PUB, url, 0)

    def serve() -> None:
        while not stop.is_set():
            if server_sub.poll(50):
                server_pub.send_multipart([answered, server_sub.recv_multipart()[1]])

    server = threading.Thread(target=serve, name="raw zmq echo", daemon=True)
    server.start()
    try:
        pub, sub = _zmq_socket(context, zmq.PUB, url, 0), _zmq_socket(context, zmq.SUB, url, 1)
        sub.subscribe(answered)
        padding = os.urandom(max(0, settings.size - 8))
        rtts = []
        for index in range(-1, WARMUP + settings.requests):  # -1: until the path is open
            body = index.to_bytes(8, "big", signed=True) + padding
            started = time.perf_counter_ns()
            pub.send_multipart([asked, body])
            _zmq_reply(pub, sub, [asked, body], is_probe=index < 0)
            if index >= WARMUP:
                rtts.append(time.perf_counter_ns() - started)
        return rtts
    finally:
        stop.set()
        server.join(START_TIMEOUT_S)
        context.destroy(linger=0)


def _zmq_reply(pub: Any, sub: Any, request: list[bytes], *, is_probe: bool) -> None:
    """Wait for the echo of ``request``; a probe is re-sent until subscriptions have travelled
    through the forwarder (ZeroMQ drops what a PUB sends before it knows of a subscriber)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if sub.poll(20 if is_probe else int(REPLY_TIMEOUT_S * 1000)):
            if sub.recv_multipart()[1][:8] == request[1][:8]:
                return
        elif is_probe:
            pub.send_multipart(request)
        else:
            break
    raise RuntimeError("raw pyzmq: no reply through the forwarder")


def raw_zmq_stream(url: str, topic: str, settings: BenchSettings) -> Side:
    stream_topic = f"{topic}/stream".encode()
    context: zmq.Context[Any] = zmq.Context()
    counter, probed, stop = _Counter(settings.count), threading.Event(), threading.Event()
    sub = _zmq_socket(context, zmq.SUB, url, 1)
    sub.subscribe(stream_topic)

    def receive() -> None:
        while not counter.done.is_set() and not stop.is_set():
            if sub.poll(50):
                if sub.recv_multipart()[1] == b"probe":
                    probed.set()
                else:
                    counter.arrived()

    receiver = threading.Thread(target=receive, name="raw zmq subscriber", daemon=True)
    receiver.start()
    try:
        pub = _zmq_socket(context, zmq.PUB, url, 0)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not probed.wait(0.01):  # until the subscription has reached the forwarder
            if time.monotonic() > deadline:
                raise RuntimeError("raw pyzmq: the subscription never reached the forwarder")
            pub.send_multipart([stream_topic, b"probe"])
        payload = os.urandom(settings.size)
        started = time.perf_counter()
        for _ in range(settings.count):
            pub.send_multipart([stream_topic, payload])
        counter.wait(settings.idle_s)
        return counter.side(started)
    finally:
        stop.set()
        receiver.join(START_TIMEOUT_S)
        context.destroy(linger=0)


# -- raw receiving of whatever is published under a prefix (bench heartbeats' baseline) ------------


class _Tally:
    """Counts arrivals, and nothing else (a baseline does no more work than receiving)."""

    def __init__(self) -> None:
        self.received = 0

    def arrived(self, _payload: bytes) -> None:
        self.received += 1


def raw_receive(
    url: str, prefix: str, qos: int, warmup_s: float, window_s: float
) -> tuple[int, float]:
    """Receive every frame published under ``prefix`` (``ns/a/``) with the bare library — a
    pyzmq SUB from the forwarder, or a paho client subscribed at ``qos`` — and return the frames
    received in the window after ``warmup_s`` and this process's CPU seconds over that window
    (every thread: paho's and ZeroMQ's I/O threads included). Prints ``ready`` once subscribed."""
    tally = _Tally()
    close = _zmq_tally(url, prefix, tally) if url.startswith("zmq://") else None
    if close is None:
        subscriber = _Paho(url, qos, tally.arrived)
        subscriber.subscribe(f"{prefix}#")
        close = subscriber.close
    try:
        print("ready", flush=True)
        time.sleep(warmup_s)
        received, cpu = tally.received, time.process_time()
        time.sleep(window_s)
        return tally.received - received, time.process_time() - cpu
    finally:
        close()


def _zmq_tally(url: str, prefix: str, tally: _Tally) -> Callable[[], None]:
    """A SUB from the forwarder on its own thread, draining without blocking once readable."""
    context: zmq.Context[Any] = zmq.Context()
    sub = _zmq_socket(context, zmq.SUB, url, 1)
    sub.subscribe(prefix.encode())
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            if sub.poll(50):
                while sub.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    sub.recv_multipart(zmq.NOBLOCK)
                    tally.received += 1

    thread = threading.Thread(target=receive, name="raw zmq subscriber", daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        thread.join(START_TIMEOUT_S)
        context.destroy(linger=0)

    return close
