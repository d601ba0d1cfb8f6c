"""The service's own containers, as the backend's container engine lists and runs them.

The ``container.*`` operations (:mod:`proxy.service.operations.containers`) reach the engine only
through :class:`ContainerEngine`; the docker runtime's
:class:`~proxy.backend.docker.ServiceContainers` implements it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

__all__ = ["ContainerEngine", "ContainerInfo"]


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """A container as the operations answer it."""

    id: str
    name: str
    image: str
    state: str
    labels: dict[str, str]


class ContainerEngine(Protocol):
    """What the operations need of the service's container engine (the docker runtime's).

    Both methods see only this service's containers: ``list_containers`` returns those carrying
    the service's own label *and* all of ``labels``; ``run_container`` gives the container the
    service's label besides ``labels``. A run starts from an image the engine already holds (it
    never pulls), with no mounts, no published ports, no added capabilities, no privileges.
    Failures are ``bus`` errors (an existing name: ``Conflict``; a missing image: ``NotFound``).
    """

    async def list_containers(self, labels: Mapping[str, str]) -> list[ContainerInfo]: ...

    async def run_container(
        self, image: str, name: str, env: Mapping[str, str], labels: Mapping[str, str]
    ) -> ContainerInfo: ...
