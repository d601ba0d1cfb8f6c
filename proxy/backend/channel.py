"""The worker channel: the replica protocol's messages and the ZeroMQ sockets that carry them.

The only module of ``proxy`` that imports zmq. The protocol itself is written down in
:mod:`proxy.backend.worker`'s docstring; this module is its implementation for both ends: an asyncio
ROUTER for the backend (:class:`RouterChannel`) and a blocking DEALER for a worker
(:class:`DealerChannel`). Each message is one frame holding a ``bus.codec.pack``'d map with a
``type`` key; the ROUTER side sees ``[routing id, message]``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast

import zmq
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from bus.codec import pack, unpack
from bus.errors import DecodeError, TransportError

__all__ = [
    "EXIT_BACKEND_LOST",
    "EXIT_LOAD_FAILED",
    "IPC_SOCKET_NAME",
    "MAX_MESSAGE_BYTES",
    "PROTOCOL",
    "TOKEN_ENV",
    "BackendMessage",
    "Batch",
    "Bye",
    "DealerChannel",
    "Fatal",
    "Heartbeat",
    "Hello",
    "Result",
    "RouterChannel",
    "Shutdown",
    "WireError",
    "WorkerMessage",
    "decode_backend_message",
    "decode_worker_message",
    "encode",
]

logger = logging.getLogger(__name__)

PROTOCOL = 1
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
TOKEN_ENV = "MODELBUS_REPLICA_TOKEN"
IPC_SOCKET_NAME = "backend.sock"
EXIT_LOAD_FAILED = 2  # the model cannot be loaded here: restarting will not help
EXIT_BACKEND_LOST = 3  # nothing heard from the backend for too long, or the service died
_HWM = 10_000
_DRAIN_LIMIT = 1_000
_EVENTS = int(zmq.EVENTS)  # plain ints: pyzmq's flag enums cost more than the calls
_POLLIN = int(zmq.POLLIN)

_T = TypeVar("_T")
_Name = Annotated[str, Field(min_length=1, max_length=200)]


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class WireError(_Message):
    code: Annotated[str, Field(min_length=1, max_length=64)]
    message: Annotated[str, Field(max_length=10_000)]
    details: dict[str, Any] = Field(default_factory=dict)


class Hello(_Message):
    type: Literal["hello"] = "hello"
    protocol: int
    name: _Name
    version: _Name
    replica: Annotated[int, Field(ge=0)]
    pid: int
    token: Annotated[str, Field(max_length=128)]


class Fatal(_Message):
    type: Literal["fatal"] = "fatal"
    name: _Name
    version: _Name
    replica: Annotated[int, Field(ge=0)]
    pid: int
    token: Annotated[str, Field(max_length=128)]
    error: WireError


class Result(_Message):
    type: Literal["result"] = "result"
    batch_id: Annotated[int, Field(ge=0)]
    outputs: list[Any] | None = None
    error: WireError | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Result:
        if (self.outputs is None) == (self.error is None):
            raise ValueError("a result carries exactly one of outputs and error")
        return self


class Heartbeat(_Message):
    type: Literal["heartbeat"] = "heartbeat"


class Bye(_Message):
    type: Literal["bye"] = "bye"


class Batch(_Message):
    type: Literal["batch"] = "batch"
    batch_id: Annotated[int, Field(ge=0)]
    inputs: list[Any]


class Shutdown(_Message):
    type: Literal["shutdown"] = "shutdown"


WorkerMessage = Annotated[Hello | Fatal | Result | Heartbeat | Bye, Field(discriminator="type")]
BackendMessage = Annotated[Batch | Heartbeat | Shutdown, Field(discriminator="type")]
_WORKER_MESSAGE: TypeAdapter[WorkerMessage] = TypeAdapter(WorkerMessage)
_BACKEND_MESSAGE: TypeAdapter[BackendMessage] = TypeAdapter(BackendMessage)


def encode(message: _Message) -> bytes:
    """Pack a message; fields left at None are omitted. Raises DecodeError if not encodable."""
    wire: dict[str, Any] = {}
    for name, value in message:
        if value is not None:
            wire[name] = value.model_dump() if isinstance(value, BaseModel) else value
    return pack(wire)


def decode_worker_message(data: bytes) -> WorkerMessage:
    """What a worker sent; DecodeError if it is not a valid protocol message."""
    return _decode(_WORKER_MESSAGE, data)


def decode_backend_message(data: bytes) -> BackendMessage:
    """What the backend sent; DecodeError if it is not a valid protocol message."""
    return _decode(_BACKEND_MESSAGE, data)


def _decode(adapter: TypeAdapter[_T], data: bytes) -> _T:
    value = unpack(data, max_bytes=MAX_MESSAGE_BYTES)
    try:
        return adapter.validate_python(value)
    except (ValidationError, ValueError) as exc:
        raise DecodeError(f"not a replica protocol message: {exc}") from exc


class RouterChannel:
    """The backend's ROUTER socket, bound to a free port on ``host`` and to a unix socket
    (``ipc://``, :attr:`ipc_path`, in a private directory of its own that sandboxed workers get
    bound in); use from one event loop.

    Messages are taken straight from the event loop's reader callback on the socket's file
    descriptor (:meth:`serve`), not through zmq.asyncio's per-call futures: on the prediction
    path that halves what the channel costs. ZeroMQ's descriptor is edge-triggered and any
    operation on the socket may consume the edge, so every drain runs until ``EVENTS`` shows
    nothing readable, and every send re-checks it.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._context = zmq.Context()
        self._socket: zmq.Socket[bytes] = self._context.socket(zmq.ROUTER)
        self._wake: Callable[[], object] | None = None
        try:
            # High-water marks and limits must be set before bind() to take effect.
            self._socket.setsockopt(zmq.SNDHWM, _HWM)
            self._socket.setsockopt(zmq.RCVHWM, _HWM)
            self._socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
            self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.bind(f"tcp://{host}:*")
            self.url: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
            self.ipc_path: Path = _socket_dir() / IPC_SOCKET_NAME
            self._socket.bind(f"ipc://{self.ipc_path}")
        except (zmq.ZMQError, OSError) as exc:
            self.close()
            raise TransportError(f"cannot bind the replica channel on {host}: {exc}") from exc

    async def serve(self, handle: Callable[[bytes, WorkerMessage], None]) -> None:
        """Call ``handle(routing id, message)`` for every valid message, from the event loop's
        reader callback, until cancelled; malformed messages are logged and dropped. Raises
        TransportError if the socket fails."""
        loop = asyncio.get_running_loop()
        failed: asyncio.Future[None] = loop.create_future()
        fd = int(self._socket.getsockopt(zmq.FD))

        def drain() -> None:
            if failed.done():
                return
            try:
                if self._drain(handle):
                    loop.call_soon(drain)  # more is queued: let other callbacks run first
            except TransportError as exc:
                failed.set_exception(exc)

        self._wake = functools.partial(loop.call_soon, drain)
        loop.add_reader(fd, drain)
        loop.call_soon(drain)
        try:
            await failed
        finally:
            self._wake = None
            if not self._socket.closed:
                loop.remove_reader(fd)

    async def receive(self) -> list[tuple[bytes, WorkerMessage]]:
        """Wait for traffic, then return what is queued (for a caller without :meth:`serve`)."""
        received: list[tuple[bytes, WorkerMessage]] = []
        while True:
            self._drain(lambda identity, message: received.append((identity, message)))
            if received:
                return received
            await _readable(int(self._socket.getsockopt(zmq.FD)))

    def _drain(self, handle: Callable[[bytes, WorkerMessage], None]) -> bool:
        """Hand over up to a batch of queued messages; True if more are waiting."""
        try:
            for _ in range(_DRAIN_LIMIT):
                if not cast(int, self._socket.getsockopt(_EVENTS)) & _POLLIN:
                    return False
                frames = self._socket.recv_multipart(flags=zmq.NOBLOCK)
                if len(frames) != 2:
                    logger.warning("dropped a replica message of %d frames", len(frames))
                    continue
                try:
                    message = decode_worker_message(frames[1])
                except DecodeError as exc:
                    logger.warning("dropped a malformed replica message: %s", exc)
                    continue
                handle(frames[0], message)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            raise TransportError(f"replica channel failed: {exc}") from exc
        return True

    def send(self, identity: bytes, message: _Message) -> bool:
        """Queue a message for one worker without waiting; False if it is gone or saturated."""
        try:
            self._socket.send_multipart([identity, encode(message)], flags=zmq.NOBLOCK)
            sent = True
        except zmq.Again:
            logger.warning("replica channel to %r is full; message dropped", identity)
            sent = False
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the worker disconnected
            logger.info("replica %r is unreachable: %s", identity, exc)
            sent = False
        # The send may have consumed the descriptor's edge for messages that arrived meanwhile.
        if (
            self._wake is not None
            and not self._socket.closed
            and cast(int, self._socket.getsockopt(_EVENTS)) & _POLLIN
        ):
            self._wake()
        return sent

    def close(self) -> None:
        if not self._socket.closed:
            self._socket.close(linger=0)
        if not self._context.closed:
            self._context.term()
        if (path := getattr(self, "ipc_path", None)) is not None:
            shutil.rmtree(path.parent, ignore_errors=True)


def _socket_dir() -> Path:
    """A new private directory for the channel's unix socket, with a path short enough for one
    (``sun_path`` holds 107 bytes)."""
    base = tempfile.gettempdir()
    if len(base) > 60:
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix="modelbus-", dir=base))


async def _readable(fd: int) -> None:
    """Wait until ``fd`` is readable (once)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


class DealerChannel:
    """A worker's blocking DEALER socket, connected to the backend's ROUTER."""

    def __init__(self, url: str) -> None:
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.DEALER)
        try:
            self._socket.setsockopt(zmq.SNDHWM, _HWM)
            self._socket.setsockopt(zmq.RCVHWM, _HWM)
            self._socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
            self._socket.connect(url)
        except zmq.ZMQError as exc:
            self.close(linger_s=0)
            raise TransportError(f"cannot connect to the backend at {url}: {exc}") from exc
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._watched: set[int] = set()

    def watch(self, fd: int) -> None:
        """Also wake :meth:`poll` when the file descriptor ``fd`` becomes readable."""
        self._poller.register(fd, zmq.POLLIN)
        self._watched.add(fd)

    def send(self, message: _Message) -> None:
        self.send_encoded(encode(message))

    def send_encoded(self, data: bytes) -> None:
        try:
            self._socket.send(data)
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot send to the backend: {exc}") from exc

    def poll(self, timeout_s: float) -> tuple[list[BackendMessage], set[int]]:
        """Wait up to ``timeout_s`` for messages or a watched fd; malformed messages are dropped."""
        try:
            events = dict(self._poller.poll(max(0, round(timeout_s * 1000))))
        except zmq.ZMQError as exc:
            raise TransportError(f"replica channel failed: {exc}") from exc
        ready = {fd for fd in self._watched if fd in events}
        messages: list[BackendMessage] = []
        if self._socket in events:
            for _ in range(_DRAIN_LIMIT):
                try:
                    data = self._socket.recv(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    messages.append(decode_backend_message(data))
                except DecodeError as exc:
                    logger.warning("dropped a malformed message from the backend: %s", exc)
        return messages, ready

    def close(self, *, linger_s: float) -> None:
        """Close, giving queued messages up to ``linger_s`` to reach the backend."""
        if not self._socket.closed:
            self._socket.close(linger=round(linger_s * 1000))
        if not self._context.closed:
            self._context.term()
