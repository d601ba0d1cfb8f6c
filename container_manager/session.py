"""A connected container manager's machinery: an event loop of its own, a bus session on it,
the deploys it stages, and the loopback endpoint Clipper's REST calls arrive on.

The loop runs in a daemon thread, so an unclosed manager never blocks the interpreter's exit
(the manager also closes its session when collected, and at exit). Every other thread —
the caller's, the HTTP server's — reaches it through a blocking portal: the endpoint never
shares the caller's event loop, which would hang as soon as the caller blocked on HTTP.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager, asynccontextmanager
from typing import Any

from anyio.from_thread import BlockingPortal

from bus import BusClient, Entity, Grant, Verifier, runner
from bus.errors import TransportError
from container_manager.loopback import LocalAuth, LoopbackServer
from container_manager.rest import ClipperRest
from container_manager.service import ServiceClient
from container_manager.staging import Deployer
from transports import open_transport

__all__ = ["LoopThread", "Session"]

logger = logging.getLogger(__name__)


class LoopThread:
    """An asyncio event loop in a daemon thread (so an unclosed manager never blocks the
    interpreter's exit), reached from other threads through a blocking portal."""

    def __init__(self) -> None:
        self._started = threading.Event()
        self._portal: BlockingPortal | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name="modelbus-container-manager", daemon=True
        )
        self._thread.start()
        self._started.wait()
        if self._portal is None:
            raise TransportError(f"the container manager's event loop failed: {self._error!r}")

    def _run(self) -> None:
        try:
            runner.run(self._main)
        except BaseException as exc:  # reported by __init__ or logged; the thread just ends
            self._error = exc
            logger.debug("the container manager's loop ended with %r", exc)
        finally:
            self._started.set()

    async def _main(self) -> None:
        async with BlockingPortal() as portal:
            self._portal = portal
            self._started.set()
            await portal.sleep_until_stopped()

    @property
    def portal(self) -> BlockingPortal:
        assert self._portal is not None
        return self._portal

    def stop(self) -> None:
        if threading.current_thread() is self._thread:  # a finalizer run by the loop itself
            self.portal.start_task_soon(self.portal.stop, True)
            return
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # already stopping
                self.portal.call(self.portal.stop, True)
        self._thread.join(timeout=10)


@asynccontextmanager
async def _bus_session(
    bus_url: str,
    entity: Entity,
    proofs: Sequence[Sequence[Grant]],
    verifier: Verifier,
    service_uri: str,
    timeout_s: float,
    service_key: str | None,
) -> AsyncIterator[ServiceClient]:
    async with BusClient(open_transport(bus_url), entity, proofs=proofs, verifier=verifier) as bus:
        yield ServiceClient(bus, service_uri, timeout_s=timeout_s, service_key=service_key)


class Session:
    """A connected manager's loop thread, bus session, deployer and loopback endpoint; opening
    it raises unless the service at ``service_uri`` is alive."""

    def __init__(
        self,
        *,
        bus_url: str,
        entity: Entity,
        proofs: Sequence[Sequence[Grant]],
        verifier: Verifier,
        service_uri: str,
        timeout_s: float,
        ready_timeout_s: float,
        auth: LocalAuth | None,
        service_key: str | None = None,
    ) -> None:
        self.loop = LoopThread()
        self._lock = threading.Lock()
        self._session: AbstractContextManager[ServiceClient] | None = None
        self.server: LoopbackServer | None = None
        try:
            opened = self.loop.portal.wrap_async_context_manager(
                _bus_session(bus_url, entity, proofs, verifier, service_uri, timeout_s, service_key)
            )
            self.service = opened.__enter__()
            self._session = opened
            self.call(self.service.check_alive)
            self.deployer = Deployer(self.service, ready_timeout_s)
            rest = ClipperRest(self.service, self.deployer)
            self.server = LoopbackServer(
                lambda method, path, body: self.call(rest.respond, method, path, body), auth=auth
            )
        except BaseException:
            self.close()
            raise

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.loop.portal.call(functools.partial(function, *args, **kwargs))

    def close(self) -> None:
        with self._lock:
            server, self.server = self.server, None
            opened, self._session = self._session, None
        if server is not None:
            server.close()
        if opened is not None:
            try:
                opened.__exit__(None, None, None)
            except Exception as exc:  # closing must not fail the caller (or the exit)
                logger.warning("closing the bus session failed: %r", exc)
        self.loop.stop()
