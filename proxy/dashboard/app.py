"""The dashboard's HTTP side, on aiohttp: one page, its live feed, JSON and Prometheus metrics.

    GET /               the page (static/index.html; its CSS and JS under /static/)
    GET /events         server-sent events: ``snapshot`` (every row) on connect, then ``update``
                        (the rows that changed, the link, the counts) within ~0.2 s of a change
    GET /api/services   every row and the link, as JSON
    GET /metrics        the fleet for Prometheus: modelbus_service_up{service=…} and friends,
                        modelbus_instance_up{service=…,instance_name=…} per named instance

Bound to a loopback address it needs no token; bound elsewhere it refuses to start without one,
and every request for data (all but the page and its static assets) must carry it
(``Authorization: Bearer T``, or ``?token=T``: the page passes its own ``?token=`` on to its event
stream, since a browser's EventSource cannot send headers). A client that falls behind the feed
by ``CLIENT_QUEUE`` updates is disconnected; its browser reconnects and gets a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
from aiohttp import web
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bus.errors import InvalidRequest
from proxy.dashboard.fleet import Fleet
from proxy.dashboard.monitor import FleetMonitor

__all__ = ["CLIENT_QUEUE", "Dashboard", "FleetCollector", "is_loopback"]

logger = logging.getLogger(__name__)

CLIENT_QUEUE = 64
JUDGE_S = 0.25  # how often the clock is applied to every record
COALESCE_S = 0.1  # changes within this long go out as one update
KEEPALIVE_S = 15.0
_STATIC = ("index.html", "dashboard.css", "dashboard.js", "favicon.svg")
_TYPES = {
    ".html": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".svg": "image/svg+xml",
}
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def is_loopback(host: str) -> bool:
    return host in _LOOPBACK or host.startswith("127.")


class FleetCollector(Collector):
    """The fleet as Prometheus metrics, read at scrape time."""

    def __init__(self, fleet: Fleet, monitor: FleetMonitor) -> None:
        self.fleet = fleet
        self.monitor = monitor

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "modelbus_service_up",
            "1 when the service's heartbeats are fresh and trusted (alive or late), else 0",
            labels=["service"],
        )
        seen = GaugeMetricFamily(
            "modelbus_service_last_seen_timestamp_seconds",
            "Unix time of the service's latest lastalive",
            labels=["service"],
        )
        instance_up = GaugeMetricFamily(
            "modelbus_instance_up",
            "1 when a named instance of a service beats fresh and trusted (alive or late), else 0",
            labels=["service", "instance_name"],  # not "instance": Prometheus' own target label
        )
        for record in self.fleet.records.values():
            up.add_metric([record.service], 1.0 if record.state in ("alive", "stale") else 0.0)
            if record.last_alive_ns is not None:
                seen.add_metric([record.service], record.last_alive_ns / 1e9)
            for name, instance in record.instances.items():
                is_up = instance.state in ("alive", "stale")
                instance_up.add_metric([record.service, name], 1.0 if is_up else 0.0)
        services = GaugeMetricFamily(
            "modelbus_services", "Services under the dashboard's pattern by state", labels=["state"]
        )
        for state, count in self.fleet.counts().items():
            services.add_metric([state], float(count))
        link = GaugeMetricFamily(
            "modelbus_dashboard_bus_up", "1 while the dashboard's own link to the bus is up"
        )
        link.add_metric([], 1.0 if self.monitor.is_link_up else 0.0)
        yield from (up, seen, instance_up, services, link)


class Dashboard:
    """The fleet, its monitor and the web app; ``run`` serves until cancelled."""

    def __init__(self, monitor: FleetMonitor, *, token: str | None = None) -> None:
        self.monitor = monitor
        self.fleet = monitor.fleet
        self.token = token
        self._changed = asyncio.Event()
        self._clients: set[asyncio.Queue[bytes | None]] = set()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FleetCollector(self.fleet, monitor))
        monitor.on_change = self._changed.set

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/events", self._events)
        app.router.add_get("/api/services", self._services)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def run(
        self,
        host: str = "127.0.0.1",
        port: int = 8470,
        *,
        task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on ``host:port`` (port 0: a free one); ``started`` gets the port."""
        if not is_loopback(host) and not self.token:
            raise InvalidRequest(
                f"the dashboard binds {host}, not a loopback address: give it a --token"
            )
        runner = web.AppRunner(self.app(), shutdown_timeout=1.0, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound = _bound_port(runner, port)
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(self.monitor.run)
                task_group.start_soon(self._feed)
                task_status.started(bound)
        finally:
            for queue in list(self._clients):
                _offer(queue, None)
            with anyio.move_on_after(5, shield=True):
                await runner.cleanup()

    # -- the live feed ------------------------------------------------------------------------

    async def _feed(self) -> None:
        """Judge the clock, coalesce changes and send each client the rows that changed."""
        sent = self.fleet.version
        link = self.monitor.link()
        while True:
            with anyio.move_on_after(JUDGE_S):
                await self._changed.wait()
                await anyio.sleep(COALESCE_S)
            self._changed.clear()
            if self.monitor.is_link_up:
                self.fleet.judge(self.monitor.confirmed_ns)
            rows = self.fleet.changed_since(sent)
            now_link = self.monitor.link()
            if not rows and now_link == link:
                continue
            sent, link = self.fleet.version, now_link
            frame = _event("update", self._summary(rows))
            for queue in list(self._clients):
                if not _offer(queue, frame):
                    self._clients.discard(queue)
                    _offer_end(queue)

    def _summary(self, rows: Any) -> dict[str, Any]:
        return {
            "now_ms": time.time_ns() // 10**6,
            "pattern": self.monitor.pattern,
            "link": self.monitor.link(),
            "counts": self.fleet.counts(),
            "rows": [record.row() for record in rows],
        }

    # -- handlers -----------------------------------------------------------------------------

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.token and request.path != "/" and not request.path.startswith("/static/"):
            given = request.query.get("token", "")
            header = request.headers.get("Authorization", "")
            if header.startswith("Bearer "):
                given = header[len("Bearer ") :]
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return web.Response(status=401, text="a token is required: ?token=… or Bearer\n")
        response = await handler(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    async def _page(self, request: web.Request) -> web.Response:
        return _asset("index.html")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        return _asset(name)

    async def _services(self, request: web.Request) -> web.Response:
        return web.json_response(self._summary(self.fleet.records.values()))

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(CLIENT_QUEUE)
        self._clients.add(queue)
        try:
            await response.write(_event("snapshot", self._summary(self.fleet.records.values())))
            while True:
                frame: bytes | None = b": keepalive\n\n"
                with anyio.move_on_after(KEEPALIVE_S):
                    frame = await queue.get()
                if frame is None:
                    break
                await response.write(frame)
        except (ConnectionResetError, ConnectionError):
            pass  # the browser went away
        finally:
            self._clients.discard(queue)
        return response


def _event(name: str, data: dict[str, Any]) -> bytes:
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return f"event: {name}\ndata: {text}\n\n".encode()


def _offer(queue: asyncio.Queue[bytes | None], frame: bytes | None) -> bool:
    try:
        queue.put_nowait(frame)
    except asyncio.QueueFull:
        return False
    return True


def _offer_end(queue: asyncio.Queue[bytes | None]) -> None:
    """End a client that fell behind: drop what it had not read, then the end mark."""
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(None)


def _asset(name: str) -> web.Response:
    data = importlib.resources.files("proxy.dashboard").joinpath("static", name).read_bytes()
    suffix = name[name.rindex(".") :]
    return web.Response(body=data, content_type=_TYPES[suffix], charset="utf-8")


def _bound_port(runner: web.AppRunner, asked: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return asked
