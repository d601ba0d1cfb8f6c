"""The instances of one service as one of them sees them: the sibling list of its plain JSON.

A named instance (bus.liveness.heartbeat) follows ``S/!meta/instances/+/+`` — the signed
lastalive, state and status of every instance of its service, itself included — starting from
the persisted ones, and judges each by the rule of bus.liveness.monitor. :meth:`snapshot` is
what its heartbeat lists in ``S/!meta/status.json`` (bus.liveness.plain_status). Only verified
messages count; at most :data:`MAX_INSTANCES` names are kept (a signer allowed under
``S/!meta`` could invent names without end). Reading needs ``C+`` on the pattern (the service
key's provisioned grants give it, proxy.service.keys): without it the view stays empty, with a
warning, and the plain JSON lists the instance itself only.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from bus.errors import DecodeError, VerificationError
from bus.liveness.heartbeat import INSTANCES, STALE_AFTER_S
from bus.liveness.monitor import ServiceState, evaluate
from bus.po import PO_METADATA, PO_STATE, PO_STATUS

if TYPE_CHECKING:
    from bus.client import BusClient
    from bus.message import Message

__all__ = ["MAX_INSTANCES", "InstanceView"]

logger = logging.getLogger(__name__)

MAX_INSTANCES = 256
_KINDS = {"lastalive": PO_METADATA, "state": PO_STATE, "status": PO_STATUS}


class InstanceView:
    """The instances of ``service_uri``, kept current while :meth:`run` runs."""

    def __init__(self, service_uri: str, *, stale_after_s: float = STALE_AFTER_S) -> None:
        self.service_uri = service_uri
        self.stale_after_s = stale_after_s
        self.records: dict[str, dict[str, dict[str, Any]]] = {}  # name → kind → value

    @property
    def pattern(self) -> str:
        return f"{self.service_uri}/{INSTANCES}/+/+"

    def take(self, message: Message) -> None:
        """Keep one verified message on ``S/!meta/instances/<name>/<kind>``; others are ignored."""
        prefix = f"{self.service_uri}/{INSTANCES}/"
        if not message.uri.startswith(prefix):
            return
        name, _, kind = message.uri.removeprefix(prefix).partition("/")
        number = _KINDS.get(kind)
        if number is None or (name not in self.records and len(self.records) >= MAX_INSTANCES):
            return
        try:
            value = message.value(number)
        except DecodeError:
            return
        if isinstance(value, dict):
            self.records.setdefault(name, {})[kind] = value

    def states(self, now_ns: int | None = None) -> list[ServiceState]:
        """Each instance judged now (``service`` is its name), by name."""
        now = time.time_ns() if now_ns is None else now_ns
        return [
            evaluate(
                name,
                records.get("lastalive"),
                records.get("state"),
                records.get("status"),
                now_ns=now,
                stale_after_s=self.stale_after_s,
            )
            for name, records in sorted(self.records.items())
        ]

    def snapshot(self) -> list[dict[str, Any]]:
        """``{"instance", "online", "ts"}`` per instance, as the plain JSON lists them."""
        return [
            {"instance": state.service, "online": state.is_alive, "ts": state.last_alive_ns}
            for state in self.states()
        ]

    async def run(
        self, client: BusClient, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Follow the instances until cancelled: the persisted records, then live ones."""
        try:
            async with client.subscribe(self.pattern) as stream:
                for message in await client.query(self.pattern):
                    self.take(message)
                task_status.started()
                async for message in stream:
                    self.take(message)
        except VerificationError as error:  # raised before subscribing: started() not called
            logger.warning(
                "the instances of %s are not listed in its plain status: %s",
                self.service_uri,
                error.message,
            )
            task_status.started()
