"""Fits and schedules from Python: the ``fit.*`` and ``schedule.*`` calls of :class:`ServiceClient`.

    job = await service.fit("thermal", streams=["ns/sensors/zone-a/*"], since_ns=..., proofs=[
        "me-sensors.grant"])
    done = await service.wait_fit(job["job_id"])       # or fit_status(job_id) to poll
    await service.schedule_add("forecast", model="thermal", every="30min", window="24h",
                               delay="5min", start="2026-12-07T00:00:00Z",
                               inputs=["ns/sensors/zone-a/*"], output="ns/forecasts/zone-a")

``proofs`` are the grant chains (chain files, or their bytes) that let you consume the streams
you name — the service checks them before it reads anything for you.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from bus.grants import encode_chain, load_chain
from bus.transfer import UploadProgress

__all__ = ["FINISHED_FIT_STATES", "FitsAndSchedules", "proof_bytes"]

FINISHED_FIT_STATES = ("succeeded", "failed", "interrupted")


def proof_bytes(proofs: Sequence[str | Path | bytes]) -> list[bytes]:
    """Grant chains as the service takes them: chain files' bytes."""
    return [p if isinstance(p, bytes) else encode_chain(load_chain(p)) for p in proofs]


class FitsAndSchedules:
    """Mixed into :class:`container_manager.ServiceClient`."""

    async def call(
        self, slot: str, op: str, *, reply_timeout_s: float | None = None, **body: Any
    ) -> Any:
        raise NotImplementedError

    async def upload_artifact(
        self,
        path: str | Path,
        *,
        name: str,
        kind: str,
        progress: Callable[[UploadProgress], None] | None = None,
        chunk_size: int = 1024 * 1024,
        window: int = 16,
    ) -> str:
        raise NotImplementedError

    # -- fits -------------------------------------------------------------------------------

    async def fit(
        self,
        model: str,
        *,
        from_version: str | None = None,
        new_version: str | None = None,
        streams: Sequence[str] = (),
        data_file: str | Path | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        make_current: bool | None = None,
        timeout_s: float = 600.0,
        memory_mb: int = 2048,
        proofs: Sequence[str | Path | bytes] = (),
    ) -> dict[str, Any]:
        """Start a fit of ``model`` (its current version, or ``from_version``: a fittable
        closure, or an image declaring a fit program, bus/PROTOCOL.md §18.9) on training
        streams or on a JSON file uploaded in chunks; returns the job (``job_id``, ``state``)."""
        body: dict[str, Any] = {
            "model": model,
            "streams": list(streams),
            "timeout_s": timeout_s,
            "memory_mb": memory_mb,
            "proofs": proof_bytes(proofs),
        }
        if data_file is not None:
            body["upload"] = await self.upload_artifact(
                data_file, name=f"{model} training data", kind="closure"
            )
        optional = {
            "from_version": from_version,
            "new_version": new_version,
            "since_ns": since_ns,
            "until_ns": until_ns,
            "make_current": make_current,
        }
        body |= {key: value for key, value in optional.items() if value is not None}
        return dict(await self.call("deploy", "fit.start", **body))

    async def fit_status(self, job_id: str) -> dict[str, Any]:
        return dict(await self.call("deploy", "fit.status", job=job_id))

    async def fit_list(self, model: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"limit": limit} | ({"model": model} if model else {})
        return list(await self.call("deploy", "fit.list", **body))

    async def fit_resume(self, job_id: str) -> dict[str, Any]:
        return dict(await self.call("deploy", "fit.resume", job=job_id))

    async def wait_fit(
        self,
        job_id: str,
        *,
        timeout_s: float = 600.0,
        poll_s: float = 0.2,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job has finished (the service offers no event for it); its status."""
        with anyio.fail_after(timeout_s):
            while True:
                job = await self.fit_status(job_id)
                if on_progress is not None:
                    on_progress(job)
                if job["state"] in FINISHED_FIT_STATES:
                    return job
                await anyio.sleep(poll_s)

    # -- schedules --------------------------------------------------------------------------

    async def schedule_add(
        self,
        name: str,
        *,
        model: str | None = None,
        query: Mapping[str, Any] | None = None,
        every: str,
        window: str,
        start: str,
        inputs: Sequence[str] = (),
        output: str,
        delay: str = "0s",
        proofs: Sequence[str | Path | bytes] = (),
        **policies: Any,
    ) -> dict[str, Any]:
        """Add a schedule of ``model`` — or of a forecast ``query`` ``{type, context,
        granularity}`` answered by the prediction API over each window; ``policies``:
        max_catchup, catchup_window, catchup_rate, overlap, max_attempts, retry_initial_s,
        retry_factor, retry_max_s (see bus/PROTOCOL.md)."""
        target = {"model": model} if query is None else {"query": dict(query)}
        return dict(
            await self.call(
                "admin",
                "schedule.add",
                name=name,
                every=every,
                window=window,
                delay=delay,
                start=start,
                inputs=list(inputs),
                output=output,
                proofs=proof_bytes(proofs),
                **target,
                **policies,
            )
        )

    async def schedule_list(self) -> list[dict[str, Any]]:
        return list(await self.call("admin", "schedule.list"))

    async def schedule_runs(
        self, name: str, *, limit: int = 100, state: str | None = None
    ) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"name": name, "limit": limit} | ({"state": state} if state else {})
        return list(await self.call("admin", "schedule.runs", **body))

    async def schedule_pause(self, name: str) -> dict[str, Any]:
        return dict(await self.call("admin", "schedule.pause", name=name))

    async def schedule_resume(self, name: str) -> dict[str, Any]:
        return dict(await self.call("admin", "schedule.resume", name=name))

    async def schedule_remove(self, name: str) -> dict[str, Any]:
        return dict(await self.call("admin", "schedule.remove", name=name))

    async def schedule_rerun(self, name: str, window: str) -> dict[str, Any]:
        return dict(await self.call("admin", "schedule.rerun", name=name, window=window))
