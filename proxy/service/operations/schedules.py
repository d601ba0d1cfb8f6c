"""The ``schedule.*`` operations on ``slot/admin``, and the service's side of the scheduler.

``schedule.add`` checks, before storing anything, that the model exists, that the requester may
consume every input URI and publish on ``<output>/*`` (grant chains sent with the request,
checked like a fit's training streams: :func:`proxy.service.operations.fit.check_consume`), and
that this service itself may publish there. The semantics of windows, catch-up, overlap and
retries are :mod:`proxy.schedules.plan`'s. :class:`WindowModel` is how the scheduler calls a
schedule's model: the serving version of the named model, with the window as one input
(:func:`proxy.schedules.scheduler.model_input`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import Field, StringConstraints, model_validator

from bus import BusClient
from bus.errors import BusError, InternalError, InvalidRequest, LimitExceeded, NotFound
from proxy.backend.embedded import EmbeddedBackend
from proxy.registry.records import ModelName
from proxy.registry.registry import Registry
from proxy.registry.schedules import ScheduleRecord
from proxy.schedules import Scheduler, Spec, parse_duration
from proxy.schedules.plan import Overlap, due_index, window_key
from proxy.schedules.scheduler import Outcome, WindowData, model_input
from proxy.service.forecast.ops import ForecastBody, ForecastOps
from proxy.service.operations.fit import check_consume, check_publish
from proxy.service.operations.predict import check_inputs
from proxy.service.slots import Body, Op
from proxy.service.versions import VersionRouter

__all__ = ["ScheduleOps", "WindowModel", "parse_start"]

ScheduleName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
Uri = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
Duration = Annotated[str, StringConstraints(min_length=1, max_length=40)]


FORECAST_PREFIX = "forecast:"
"""A schedule's model text for a forecast query (§17.11): the prefix, then the query's JSON."""


class ForecastQuery(Body):
    """A schedule whose windows are answered by the prediction API (§17.8) instead of a model."""

    type: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    context: dict[str, str] | Annotated[str, StringConstraints(max_length=200)]
    granularity: Annotated[str, StringConstraints(min_length=1, max_length=16)]


class ScheduleAddBody(Body):
    name: ScheduleName
    model: ModelName | None = None
    query: ForecastQuery | None = None
    every: Duration
    window: Duration
    delay: Duration = "0s"
    start: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    inputs: list[Uri] = Field(default=[], max_length=64)
    output: Uri
    max_catchup: int = Field(default=100, ge=0, le=100_000)
    catchup_window: Duration = "365d"
    catchup_rate: float = Field(default=10.0, ge=0)
    overlap: Overlap = "buffer_all"
    max_attempts: int = Field(default=3, ge=1, le=100)
    retry_initial_s: float = Field(default=1.0, ge=0)
    retry_factor: float = Field(default=2.0, ge=1)
    retry_max_s: float = Field(default=300.0, ge=0)
    proofs: list[bytes] = Field(default=[], max_length=16)

    @model_validator(mode="after")
    def _model_or_query(self) -> ScheduleAddBody:
        if (self.model is None) == (self.query is None):
            raise ValueError("name exactly one of 'model' or 'query'")
        if self.model is not None and not self.inputs:
            raise ValueError("a model's schedule reads at least one input URI")
        return self

    def target(self, owner: str) -> str:
        """What the schedule record keeps as its model: the name, or the query's canonical
        text (with the owner it runs as) behind :data:`FORECAST_PREFIX`."""
        if self.query is None:
            assert self.model is not None
            return self.model
        fields = self.query.model_dump(exclude={"op"}) | {"owner": owner}
        return FORECAST_PREFIX + json.dumps(fields, sort_keys=True, separators=(",", ":"))


class ScheduleNameBody(Body):
    name: ScheduleName


class RunsBody(Body):
    name: ScheduleName
    limit: int = Field(default=100, gt=0, le=10_000)
    state: str | None = None


class RerunBody(Body):
    name: ScheduleName
    window: Annotated[str, StringConstraints(min_length=1, max_length=64)]


def parse_start(text: str) -> int:
    """A start time: nanoseconds since the epoch, or ISO 8601 (UTC unless it says otherwise)."""
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"start {text[:64]!r} is neither ISO 8601 nor ns") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def _spec(body: ScheduleAddBody) -> dict[str, Any]:
    try:
        fields: dict[str, Any] = {
            "start_ns": parse_start(body.start),
            "every_ns": parse_duration(body.every),
            "window_ns": parse_duration(body.window),
            "delay_ns": parse_duration(body.delay),
            "catchup_window_ns": parse_duration(body.catchup_window),
            "max_catchup": body.max_catchup,
            "catchup_rate": body.catchup_rate,
            "overlap": body.overlap,
            "max_attempts": body.max_attempts,
            "retry_initial_s": body.retry_initial_s,
            "retry_factor": body.retry_factor,
            "retry_max_s": body.retry_max_s,
        }
        Spec(**fields)
    except ValueError as exc:
        raise InvalidRequest(f"bad schedule: {exc}") from None
    return fields


def schedule_view(record: ScheduleRecord) -> dict[str, Any]:
    return record.model_dump()


class WindowModel:
    """The scheduler's model call: the named model's serving version, one input per window; or,
    for a schedule of a forecast query, the prediction API over the window (its answer, with
    provenance and gaps, is the output; "forecast" stands for the version)."""

    def __init__(
        self,
        backend: EmbeddedBackend,
        router: VersionRouter,
        *,
        timeout_s: float,
        forecasts: ForecastOps | None = None,
    ) -> None:
        self.backend = backend
        self.router = router
        self.timeout_s = timeout_s
        self.forecasts = forecasts

    async def __call__(self, model: str, windows: Sequence[WindowData]) -> list[Outcome]:
        """One outcome per window. A named model gets one call with one input per window; a
        window whose input the checks refuse fails alone, and when the call fails on an input
        (refused, or the model raised) each window is tried alone, so it fails only its own."""
        if model.startswith(FORECAST_PREFIX):
            query = json.loads(model[len(FORECAST_PREFIX) :])
            return [await self._forecast_outcome(query, data) for data in windows]
        version = await self.router.version_for(model, None)
        input_type = await self.router.input_type(model, version)
        outcomes: list[Outcome] = []
        values: list[Any] = []
        where: list[int] = []
        for data in windows:
            try:
                value = model_input(input_type, data)
                check_inputs(input_type, [value])
            except (BusError, TypeError, ValueError) as exc:
                outcomes.append(_refused(exc))
                continue
            outcomes.append(_PLACEHOLDER)
            values.append(value)
            where.append(len(outcomes) - 1)
        for position, outcome in zip(
            where, await self._predict(model, version, values), strict=True
        ):
            outcomes[position] = outcome
        return outcomes

    async def _predict(self, model: str, version: str, values: list[Any]) -> list[Outcome]:
        if not values:
            return []
        try:
            outputs = await self.backend.predict(model, version, values, timeout_s=self.timeout_s)
            return [(version, output) for output in outputs]
        except _PER_INPUT as error:
            if len(values) == 1:
                return [error]
        except BusError as error:  # not about one input (a timeout, no such version…): all fail
            return [error] * len(values)
        alone: list[Outcome] = []
        for value in values:
            try:
                found = await self.backend.predict(
                    model, version, [value], timeout_s=self.timeout_s
                )
                alone.append((version, found[0]))
            except BusError as error:
                alone.append(error)
        return alone

    async def _forecast_outcome(self, query: dict[str, Any], data: WindowData) -> Outcome:
        try:
            return "forecast", await self._forecast(query, data)
        except BusError as error:
            return error

    async def _forecast(self, query: dict[str, Any], data: WindowData) -> dict[str, Any]:
        if self.forecasts is None:
            raise InvalidRequest("this service answers no forecast queries")
        body = ForecastBody(
            type=query["type"],
            context=query["context"],
            start=_iso(data.start_ns),
            end=_iso(data.end_ns),
            granularity=query["granularity"],
        )
        # As the schedule's owner, presenting no proofs: a model with training streams the
        # owner may not consume without one is not used (§17.8, §17.11).
        return await self.forecasts.forecast(str(query["owner"]), body)


_PER_INPUT = (InvalidRequest, LimitExceeded, InternalError)
"""Errors a model call may raise because of one of its inputs: then each is tried alone."""
_PLACEHOLDER: Outcome = ("", None)


def _refused(exc: Exception) -> BusError:
    if isinstance(exc, BusError):
        return exc
    return InvalidRequest(f"the window cannot be a model input: {type(exc).__name__}: {exc}")


def _iso(ts_ns: int) -> str:
    return dt.datetime.fromtimestamp(ts_ns / 1e9, tz=dt.UTC).isoformat()


class ScheduleOps:
    def __init__(self, registry: Registry, client: BusClient, scheduler: Scheduler) -> None:
        self.registry = registry
        self.client = client
        self.verifier = client.verifier
        self.scheduler = scheduler
        self.clock = scheduler.clock

    def table(self) -> dict[str, Op[Any]]:
        return {
            "schedule.add": Op(ScheduleAddBody, self.add),
            "schedule.list": Op(Body, self.list_all),
            "schedule.runs": Op(RunsBody, self.runs),
            "schedule.pause": Op(ScheduleNameBody, self.pause),
            "schedule.resume": Op(ScheduleNameBody, self.resume),
            "schedule.remove": Op(ScheduleNameBody, self.remove),
            "schedule.rerun": Op(RerunBody, self.rerun),
        }

    def _nudge(self) -> None:
        self.scheduler.nudge()

    async def add(self, sender: str, body: ScheduleAddBody) -> dict[str, Any]:
        spec = _spec(body)
        if body.model is not None and not await self.registry.list_models(body.model):
            raise NotFound(f"no model named {body.model!r} is registered", model=body.model)
        check_consume(self.verifier, sender, list(body.inputs), body.proofs)
        sample = f"{body.output}/{window_key(spec['start_ns'])}"
        check_publish(self.verifier, sender, sample, body.proofs)
        self.client.proof_for(sample, "P")  # this service must be able to publish the outputs
        record = await self.registry.add_schedule(
            body.name,
            model=body.target(sender),
            inputs=body.inputs,
            output=body.output,
            spec=spec,
            owner=sender,
            cursor=0,
            now_ns=self.clock(),
        )
        self._nudge()
        return schedule_view(record)

    async def list_all(self, sender: str, body: Body) -> list[dict[str, Any]]:
        return [schedule_view(record) for record in await self.registry.list_schedules()]

    async def runs(self, sender: str, body: RunsBody) -> list[dict[str, Any]]:
        if body.state not in (None, "pending", "running", "done", "failed", "skipped"):
            raise InvalidRequest(f"no window state {body.state[:20]!r}")
        windows = await self.registry.list_windows(
            body.name,
            limit=body.limit,
            state=body.state,  # type: ignore[arg-type]
        )
        return [w.view() for w in windows]

    async def pause(self, sender: str, body: ScheduleNameBody) -> dict[str, Any]:
        record = await self.registry.set_paused(body.name, True, cursor=None, now_ns=self.clock())
        return schedule_view(record)

    async def resume(self, sender: str, body: ScheduleNameBody) -> dict[str, Any]:
        """Resume; windows that fell due while paused are not backfilled (Temporal's pause)."""
        found = await self.registry.get_schedule(body.name)
        now = self.clock()
        cursor = due_index(Spec(**found.spec), now) if found.paused else None
        record = await self.registry.set_paused(body.name, False, cursor=cursor, now_ns=now)
        self._nudge()
        return schedule_view(record)

    async def remove(self, sender: str, body: ScheduleNameBody) -> dict[str, Any]:
        return schedule_view(await self.registry.remove_schedule(body.name))

    async def rerun(self, sender: str, body: RerunBody) -> dict[str, Any]:
        window = await self.registry.rerun_window(body.name, body.window, now_ns=self.clock())
        self._nudge()
        return window.view()
