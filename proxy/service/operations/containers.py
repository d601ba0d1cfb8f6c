"""The ``container.*`` operations on ``slot/deploy``: the part of the Docker API that is proxied.

    container.list {labels: {key: value}}                → [container, ...]
    container.run  {image, name, env: {K: V}, labels}    → container
    container = {id, name, image, state, labels}

They live on the deploy slot, so only a grant that allows deploying reaches them: a grant that
allows predicting is refused on the bus (``OutOfScope``) before anything here runs. The engine
confines them to this service's own containers (:class:`proxy.backend.ContainerEngine`); callers
may not set
``modelbus.*`` labels, and each run records who asked for it in ``modelbus.requester``. A
service without a container engine answers both with ``NotFound``, naming what is missing.
Containers started by ``container.run`` and still live (not exited) are capped per sender and
in all (``limit_exceeded`` with details ``{"limit", "running"}``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from pydantic import Field, StringConstraints, field_validator

from bus.errors import LimitExceeded, NotFound
from proxy.backend.containers import ContainerEngine, ContainerInfo
from proxy.service.slots import Body, Op

__all__ = ["REQUESTER_LABEL", "ContainerEngine", "ContainerInfo", "ContainerOps"]

REQUESTER_LABEL = "modelbus.requester"
RESERVED_PREFIX = "modelbus."
MAX_LABELS = 64
MAX_ENV = 256
MAX_RUN_PER_SENDER = 4
MAX_RUN_TOTAL = 16
DONE_STATES = frozenset({"exited", "dead", "removing"})

LabelKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")]
LabelValue = Annotated[str, StringConstraints(max_length=1024)]
EnvKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
EnvValue = Annotated[str, StringConstraints(max_length=32_768)]
ContainerName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")]
ImageRef = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._/:@-]{0,254}$")]


class ListBody(Body):
    labels: dict[LabelKey, LabelValue] = Field(default={}, max_length=MAX_LABELS)


class RunBody(Body):
    image: ImageRef
    name: ContainerName
    env: dict[EnvKey, EnvValue] = Field(default={}, max_length=MAX_ENV)
    labels: dict[LabelKey, LabelValue] = Field(default={}, max_length=MAX_LABELS)

    @field_validator("labels")
    @classmethod
    def _not_reserved(cls, labels: dict[str, str]) -> dict[str, str]:
        if any(key.startswith(RESERVED_PREFIX) for key in labels):
            raise ValueError(f"labels starting with {RESERVED_PREFIX!r} are the service's")
        return labels


class ContainerOps:
    """``container.list`` and ``container.run``, on ``engine`` (None: the service has none)."""

    def __init__(self, engine: ContainerEngine | None) -> None:
        self.engine = engine

    def table(self) -> dict[str, Op[Any]]:
        return {"container.list": Op(ListBody, self.list), "container.run": Op(RunBody, self.run)}

    def _engine(self) -> ContainerEngine:
        if self.engine is None:
            raise NotFound(
                "this modelbus service has no container engine, so it can neither list nor "
                "run containers; start it with the docker runtime configured",
                engine=None,
            )
        return self.engine

    async def list(self, sender: str, query: ListBody) -> list[dict[str, Any]]:
        found = await self._engine().list_containers(query.labels)
        return [asdict(container) for container in found]

    async def run(self, sender: str, request: RunBody) -> dict[str, Any]:
        engine = self._engine()
        await self._check_room(engine, sender)
        labels = {**request.labels, REQUESTER_LABEL: sender}
        return asdict(await engine.run_container(request.image, request.name, request.env, labels))

    async def _check_room(self, engine: ContainerEngine, sender: str) -> None:
        """LimitExceeded if the sender, or everyone, has as many run containers live as allowed."""
        live = [
            container.labels[REQUESTER_LABEL]
            for container in await engine.list_containers({})
            if REQUESTER_LABEL in container.labels and container.state not in DONE_STATES
        ]
        mine = live.count(sender)
        for count, limit, whose in (
            (mine, MAX_RUN_PER_SENDER, "of yours"),
            (len(live), MAX_RUN_TOTAL, "in all"),
        ):
            if count >= limit:
                raise LimitExceeded(
                    f"{count} containers started by container.run {whose} are live, the most "
                    "allowed; stop one first",
                    limit=limit,
                    running=count,
                )
