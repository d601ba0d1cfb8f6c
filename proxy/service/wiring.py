"""Building the fit and schedule operations of a running service (kept out of start-up).

:func:`fit_ops` makes the fit jobs (:mod:`proxy.fitting`: they run in the service's task group,
read training streams over the bus, deploy through the version router, fit image versions on the
docker runtime's engine if there is one) and their operations;
:func:`schedule_ops` the scheduler (:mod:`proxy.schedules`, instance named by a fresh random id
per start, so a restarted proxy takes its own unfinished windows over once their lease expires)
and its operations.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

from anyio.abc import TaskGroup

from bus import BusClient
from proxy.backend.embedded import EmbeddedBackend
from proxy.backend.runtime import ProcessRuntime
from proxy.fitting import FitJobs
from proxy.fitting.images import ContainerFits
from proxy.registry.registry import Registry
from proxy.schedules import Scheduler
from proxy.schedules.busio import BusWindowInputs, BusWindowOutputs
from proxy.service.forecast.ops import ForecastOps
from proxy.service.operations.fit import FitOps, FittedVersions
from proxy.service.operations.schedules import ScheduleOps, WindowModel
from proxy.service.settings import ProxySettings
from proxy.service.versions import VersionRouter
from proxy.uploads import Uploads

if TYPE_CHECKING:  # docker-py only if an engine is used
    from proxy.backend.docker import DockerRuntime

__all__ = ["fit_ops", "schedule_ops"]


def fit_ops(
    settings: ProxySettings,
    registry: Registry,
    uploads: Uploads,
    backend: EmbeddedBackend,
    router: VersionRouter,
    client: BusClient,
    runtime: ProcessRuntime,
    task_group: TaskGroup,
    image_runtime: DockerRuntime | None = None,
) -> FitOps:
    jobs = FitJobs(
        registry,
        settings.data_dir / "fits",
        task_group=task_group,
        read_streams=BusWindowInputs(client, per_pass=False).read,
        artifact_path=uploads.artifact_path,
        deploy=FittedVersions(registry, uploads, backend, router),
        sandbox=runtime.sandbox,
        containers=None if image_runtime is None else ContainerFits(image_runtime),
    )
    return FitOps(registry, uploads, jobs, client.verifier)


def schedule_ops(
    settings: ProxySettings,
    registry: Registry,
    backend: EmbeddedBackend,
    router: VersionRouter,
    client: BusClient,
    forecasts: ForecastOps | None = None,
) -> ScheduleOps:
    scheduler = Scheduler(
        registry,
        BusWindowInputs(client),
        BusWindowOutputs(client),
        WindowModel(backend, router, timeout_s=settings.predict_timeout_s, forecasts=forecasts),
        clock=time.time_ns,
        instance=uuid.uuid4().hex,
    )
    return ScheduleOps(registry, client, scheduler)
