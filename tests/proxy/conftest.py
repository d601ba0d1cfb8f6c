"""Fixtures for the service's end-to-end tests: a whole proxy on a real transport, and the
entities that talk to it — an operator (C*P on the whole service, from the namespace owner) and a
viewer (P on ``slot/predict`` only).

The proxy runs in the *test's* task group: pytest-asyncio runs an async fixture's setup and
teardown in different tasks, which anyio's cancel scopes forbid. So a fixture hands the test a
:class:`ProxyHarness` (transport, data directory, entities) and the test opens the service with
``async with harness.serving() as service:``; leaving the block stops the proxy and its workers.
Opening it again on the same harness restarts the service on the same data directory (same
proxy key, registry and artifacts).

Transports: ``memory://<unique hub>``, the ``zmq_bus_url`` forwarder (the proxy's own embedded
bus turned off) and Mosquitto (``mosquitto_url``). Namespaces are the proxy's fresh key, so
tests sharing a broker never hear each other.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from bus import BusClient, Entity, Grant
from container_manager import ServiceClient
from proxy.service.settings import ProxySettings
from proxy.service.startup import ServiceInfo, load_or_create_entity, run_proxy
from transports import open_transport

__all__ = [
    "DAY_NS",
    "TRANSPORTS",
    "ProxyHarness",
    "Service",
    "wait_until",
]

DAY_NS = 86_400 * 10**9
START_TIMEOUT_S = 30.0
POLL_S = 0.05

TRANSPORTS = ["memory", "zeromq", pytest.param("mqtt", marks=pytest.mark.mqtt)]


async def wait_until(
    condition: Callable[[], Awaitable[bool]], *, timeout_s: float = 30.0, what: str = ""
) -> None:
    """Poll ``condition`` until true, for states the service offers no way to await
    (a worker's batch in flight, a file removed by a background sweep)."""
    try:
        with anyio.fail_after(timeout_s):
            while not await condition():  # noqa: ASYNC110 (no event exists to await)
                await anyio.sleep(POLL_S)
    except TimeoutError:
        raise AssertionError(f"not true within {timeout_s} s: {what or condition}") from None


@dataclass
class Service:
    """A running proxy and clients of it, as the operator and as the viewer."""

    info: ServiceInfo
    settings: ProxySettings
    operator: ServiceClient
    viewer: ServiceClient
    harness: ProxyHarness

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir


@dataclass
class ProxyHarness:
    """Where and how a test's proxy runs, and who talks to it; see the module docstring."""

    bus_url: str
    data_dir: Path
    operator: Entity = field(default_factory=lambda: Entity.generate(comment="operator"))
    viewer: Entity = field(default_factory=lambda: Entity.generate(comment="viewer"))

    def settings(self, **overrides: Any) -> ProxySettings:
        values: dict[str, Any] = {
            "bus_url": self.bus_url,
            "embed_bus": False,
            "data_dir": self.data_dir,
            "heartbeat_interval_s": 1.0,
        }
        return ProxySettings(**(values | overrides))

    @property
    def owner(self) -> Entity:
        """The proxy's entity, which owns the service's namespace (made on first use)."""
        return load_or_create_entity(self.settings())

    @property
    def service_uri(self) -> str:
        return f"{self.owner.key_text}/s.modelbus/_"

    def slot(self, name: str) -> str:
        return f"{self.service_uri}/i.modelbus/slot/{name}"

    def grant(
        self,
        to: Entity,
        pattern: str,
        permissions: str,
        *,
        giver: Entity | None = None,
        expires_ns: int | None = None,
        ttl: int = 0,
    ) -> Grant:
        now = time.time_ns()
        return Grant.create(
            giver or self.owner,
            to.public_key,
            pattern,
            permissions,
            ttl=ttl,
            expires_ns=now + DAY_NS if expires_ns is None else expires_ns,
            created_ns=now - 1,
        )

    def operator_grant(self) -> Grant:
        return self.grant(self.operator, f"{self.service_uri}/*", "C*P")

    def viewer_grant(self) -> Grant:
        return self.grant(self.viewer, self.slot("predict"), "P")

    @asynccontextmanager
    async def client(
        self, entity: Entity, proofs: Sequence[Sequence[Grant]] = (), *, timeout_s: float = 30.0
    ) -> AsyncIterator[ServiceClient]:
        """A ServiceClient of the service as ``entity``, on its own bus connection."""
        async with BusClient(open_transport(self.bus_url), entity, proofs=proofs) as bus:
            yield ServiceClient(bus, self.service_uri, timeout_s=timeout_s)

    @asynccontextmanager
    async def serving(self, **overrides: Any) -> AsyncIterator[Service]:
        """Run the proxy (``overrides`` change its settings) with operator and viewer clients."""
        settings = self.settings(**overrides)
        async with AsyncExitStack() as stack:
            task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(task_group.cancel_scope.cancel)
            with anyio.fail_after(START_TIMEOUT_S):
                info: ServiceInfo = await task_group.start(run_proxy, settings)
            assert info.service_uri == self.service_uri
            operator = await stack.enter_async_context(
                self.client(self.operator, [[self.operator_grant()]])
            )
            viewer = await stack.enter_async_context(
                self.client(self.viewer, [[self.viewer_grant()]])
            )
            yield Service(info, settings, operator, viewer, self)


def _bus_url(request: pytest.FixtureRequest, kind: str) -> str:
    if kind == "memory":
        return f"memory://proxy-{uuid.uuid4().hex}"
    if kind == "zeromq":
        return str(request.getfixturevalue("zmq_bus_url"))
    if kind == "mqtt":
        return str(request.getfixturevalue("mosquitto_url"))
    raise ValueError(f"unknown transport {kind!r}")


@pytest.fixture(params=TRANSPORTS)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> ProxyHarness:
    """A proxy harness on each transport in turn."""
    return ProxyHarness(_bus_url(request, request.param), tmp_path / "proxy")


@pytest.fixture
def memory_harness(request: pytest.FixtureRequest, tmp_path: Path) -> ProxyHarness:
    """A proxy harness on an in-process hub: for scenarios the transport adds nothing to."""
    return ProxyHarness(_bus_url(request, "memory"), tmp_path / "proxy")


@pytest.fixture
def zmq_harness(request: pytest.FixtureRequest, tmp_path: Path) -> ProxyHarness:
    """A proxy harness on a ZeroMQ forwarder that outlives any proxy (for separate processes)."""
    return ProxyHarness(_bus_url(request, "zeromq"), tmp_path / "proxy")


@pytest.fixture
def gates(tmp_path: Path) -> Path:
    """Where a test's gate files live: a directory its sandboxed models see read-only (pass
    ``SandboxLimits(shared_dirs=(gates,))``); readable by the sandbox's user."""
    shared = tmp_path / "gates"
    shared.mkdir()
    shared.chmod(0o755)
    return shared
