"""Work done after a served answer, off its path: shadow copies and the prediction log.

Both go through bounded queues (``shadow_queue``, ``log_queue`` entries): submitting never
waits — when a queue is full the item is dropped and counted (``dropped_shadows``,
``dropped_logs``), so neither a slow shadow version nor a slow registry or bus touches a served
answer or its latency. One task runs shadow copies: it lets them gather for ``shadow_linger_s``
(20 ms), then sends each shadow version the gathered inputs as one call (at most 1,024 inputs),
bounded by ``shadow_timeout_s``, so a copy costs the served path little more than a queue
entry. Each copy's answer is compared with the served one
(``chooser.policies.difference``), the mean difference fed to the shadow release as the metric
``shadow_difference`` and its failures as ``shadow_error`` (1 failed, 0 answered) — both usable
by a metric validity gate — and logged when the contract logs. One task writes log records in
batches to the registry and publishes each, signed and persisted, on
``<service URI>/predlog/<app>/<key segment>`` (so the latest record per key stays queryable).
A third task stores dirty policy state every ``flush_s``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import anyio
from anyio.abc import TaskStatus

from bus.errors import BusError
from chooser.policies import LogRecord, difference, key_segment
from proxy.routing.keeper import PolicyKeeper

__all__ = ["Background", "Predictor", "Publisher", "ShadowJob"]

logger = logging.getLogger(__name__)

Predictor = Callable[[str, str, list[Any], float], Awaitable[list[Any]]]
Publisher = Callable[[str, dict[str, Any]], Awaitable[None]]
LOG_BATCH = 256
SHADOW_BATCH_INPUTS = 1024


def _batches(jobs: list[ShadowJob]) -> list[list[ShadowJob]]:
    """Jobs grouped by (app, model, version), at most SHADOW_BATCH_INPUTS inputs a group."""
    groups: dict[tuple[str, str, str], list[list[ShadowJob]]] = {}
    for job in jobs:
        chunks = groups.setdefault((job.app, job.model, job.version), [[]])
        if chunks[-1] and sum(len(j.inputs) for j in chunks[-1]) + len(job.inputs) > (
            SHADOW_BATCH_INPUTS
        ):
            chunks.append([])
        chunks[-1].append(job)
    return [chunk for chunks in groups.values() for chunk in chunks]


@dataclass(frozen=True, slots=True)
class ShadowJob:
    app: str
    model: str
    version: str
    inputs: list[Any]
    served: list[Any]
    records: list[LogRecord]
    """One per input: the served record, made a shadow record once the answer is in."""
    is_logged: bool


class Background:
    def __init__(
        self,
        keeper: PolicyKeeper,
        predictor: Predictor,
        publish: Publisher,
        *,
        service_uri: str,
        shadow_queue: int = 256,
        log_queue: int = 4096,
        shadow_timeout_s: float = 30.0,
        shadow_linger_s: float = 0.02,
        flush_s: float = 1.0,
    ) -> None:
        self.keeper = keeper
        self.predictor = predictor
        self.publish = publish
        self.service_uri = service_uri
        self.shadow_timeout_s = shadow_timeout_s
        self.shadow_linger_s = shadow_linger_s
        self.flush_s = flush_s
        self._shadow_in, self._shadow_out = anyio.create_memory_object_stream[ShadowJob](
            shadow_queue
        )
        self._log_in, self._log_out = anyio.create_memory_object_stream[tuple[str, LogRecord]](
            log_queue
        )
        self.dropped_shadows = 0
        self.dropped_logs = 0
        self.shadows_run = 0
        self.logged = 0

    def counters(self) -> dict[str, int]:
        return {
            "shadows_run": self.shadows_run,
            "dropped_shadows": self.dropped_shadows,
            "logged": self.logged,
            "dropped_logs": self.dropped_logs,
        }

    def submit_shadow(self, job: ShadowJob) -> None:
        try:
            self._shadow_in.send_nowait(job)
        except anyio.WouldBlock:
            self.dropped_shadows += 1

    def submit_log(self, app: str, record: LogRecord) -> None:
        try:
            self._log_in.send_nowait((app, record))
        except anyio.WouldBlock:
            self.dropped_logs += 1

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the three tasks until cancelled; the policy state is stored once more then."""
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._run_shadows)
                group.start_soon(self._write_logs)
                group.start_soon(self._flush_loop)
                task_status.started()
        finally:
            for stream in (self._shadow_in, self._shadow_out, self._log_in, self._log_out):
                stream.close()
            with anyio.move_on_after(5, shield=True):
                await self.keeper.flush()

    async def _flush_loop(self) -> None:
        while True:
            await anyio.sleep(self.flush_s)
            await self.keeper.flush()

    async def _run_shadows(self) -> None:
        async for first in self._shadow_out:
            await anyio.sleep(self.shadow_linger_s)  # let copies gather: one call for many
            jobs = [first]
            while True:
                try:
                    jobs.append(self._shadow_out.receive_nowait())
                except anyio.WouldBlock:
                    break
            for batch in _batches(jobs):
                await self._shadow(batch)

    async def _shadow(self, jobs: list[ShadowJob]) -> None:
        """One call to the shadow version for the inputs of ``jobs`` (same app and version)."""
        head = jobs[0]
        inputs = [value for job in jobs for value in job.inputs]
        began = time.perf_counter()
        try:
            outputs = await self.predictor(head.model, head.version, inputs, self.shadow_timeout_s)
            error = None
        except BusError as failure:
            outputs, error = [None] * len(inputs), f"{failure.code}: {failure.message}"
        latency_ms = (time.perf_counter() - began) * 1e3
        start = 0
        for job in jobs:
            own = outputs[start : start + len(job.inputs)]
            start += len(job.inputs)
            await self._compared(job, own, error, latency_ms)

    async def _compared(
        self, job: ShadowJob, outputs: list[Any], error: str | None, latency_ms: float
    ) -> None:
        self.shadows_run += 1
        diffs = [difference(s, o) for s, o in zip(job.served, outputs, strict=False)]
        contract = await self.keeper.contract(job.app)
        if contract is not None and job.version in contract.state.releases:
            if error is None:
                for _ in job.inputs:
                    contract.record_answer(job.version)
                contract.feed_metric(
                    job.version, "shadow_difference", math.fsum(diffs) / max(1, len(diffs))
                )
            contract.feed_metric(job.version, "shadow_error", 0.0 if error is None else 1.0)
            self.keeper.touch(job.app, "contract")
        if job.is_logged:
            for record, output, diff in zip(job.records, outputs, diffs, strict=False):
                self.submit_log(
                    job.app,
                    replace(
                        record,
                        version=job.version,
                        kind="shadow",
                        output=output,
                        error=error,
                        latency_ms=latency_ms,
                        served_version=record.version,
                        difference=None if error is not None else diff,
                    ),
                )

    async def _write_logs(self) -> None:
        async for first in self._log_out:
            batch = [first]
            while len(batch) < LOG_BATCH:
                try:
                    batch.append(self._log_out.receive_nowait())
                except anyio.WouldBlock:
                    break
            by_app: dict[str, list[dict[str, Any]]] = {}
            for app, record in batch:
                by_app.setdefault(app, []).append(record.to_data())
            for app, records in by_app.items():
                await self._write(app, records)

    async def _write(self, app: str, records: list[dict[str, Any]]) -> None:
        try:
            await self.keeper.registry.append_log(app, records)
            for record in records:
                uri = f"{self.service_uri}/predlog/{app}/{key_segment(record['key'])}"
                await self.publish(uri, record)
            self.logged += len(records)
        except BusError as error:
            self.dropped_logs += len(records)
            logger.warning(
                "prediction log of %s: %d records lost: %s", app, len(records), error.message
            )
