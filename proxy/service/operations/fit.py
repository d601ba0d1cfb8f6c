"""The ``fit.*`` operations on ``slot/deploy``: retrain a fittable model into a new version.

``fit.start`` checks, before anything runs, that the requester may consume every training
stream it names: each stream must be authorized by one of the grant chains sent with the request
(``proofs``), by the same rule the bus uses for a subscription (``C``, ``C+`` or ``C*``,
:func:`bus.consume_right`), checked with the service's verifier. The job itself runs in
:mod:`proxy.fitting`; here is what it needs from the service: reading the streams over the bus
(:class:`proxy.schedules.busio.BusWindowInputs`) and deploying the result
(:class:`FittedVersions`): the archive (an image version's: its new state, PROTOCOL §18.9)
stored content-addressed like any upload, a new immutable version registered with its
provenance (``parent_version``, ``fit_job``,
``training_streams``, ``training_range`` …), its replicas started, and — when the request or the
parent version's ``fit_auto_switch`` metadata says so — made current, so it takes traffic once
one of its replicas is ready (:class:`proxy.service.versions.VersionRouter`), the old version
answering until then. Otherwise it is "deployed, not current".
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path
from typing import Annotated, Any

import anyio
from pydantic import Field, StringConstraints

from bus import artifact, consume_right, key_from_text
from bus.errors import BusError, Conflict, InvalidRequest, PermissionMissing
from bus.grants import decode_chain
from bus.verifier import Verifier
from proxy.backend.embedded import EmbeddedBackend
from proxy.backend.images import FIT_LABEL, find_saved_image
from proxy.fitting import FitJobs, Training
from proxy.registry.fit_jobs import FitJobRecord
from proxy.registry.records import FIT_STATE_KEY, ModelName, ModelVersion, Sha256
from proxy.registry.registry import Registry
from proxy.service.slots import Body, Op
from proxy.service.versions import VersionRouter, start_model
from proxy.uploads import Uploads

__all__ = ["FitOps", "FitStartBody", "FittedVersions", "check_consume", "check_publish"]

logger = logging.getLogger(__name__)

MAX_STREAMS = 64
StreamUri = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class FitStartBody(Body):
    model: ModelName
    from_version: ModelName | None = None
    new_version: ModelName | None = None
    streams: list[StreamUri] = Field(default=[], max_length=MAX_STREAMS)
    upload: Sha256 | None = None
    since_ns: int | None = Field(default=None, ge=0)
    until_ns: int | None = Field(default=None, ge=0)
    make_current: bool | None = None
    timeout_s: float = Field(default=600.0, gt=0, le=24 * 3600)
    memory_mb: int = Field(default=2048, ge=64, le=256 * 1024)
    proofs: list[bytes] = Field(default=[], max_length=16)


class JobBody(Body):
    job: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{12,32}$")]


class FitListBody(Body):
    model: ModelName | None = None
    limit: int = Field(default=50, gt=0, le=1000)


def _chains(proofs: list[bytes]) -> list[tuple[bytes, ...]]:
    return [()] + [tuple(grant.encode() for grant in decode_chain(proof)) for proof in proofs]


def _check(verifier: Verifier, sender: str, uri: str, right: str, proofs: list[bytes]) -> None:
    key = key_from_text(sender)
    reasons: list[str] = []
    for chain in _chains(proofs):
        try:
            verifier.authorize(key, chain, uri, right)
            return
        except BusError as error:
            reasons.append(error.message)
    raise PermissionMissing(
        f"you may not {'publish on' if right == 'P' else 'consume'} {uri!r}: none of the "
        f"{len(proofs)} grant chains sent with the request gives {right} on it",
        uri=uri,
        needed=right,
        reasons=reasons[1:],
    )


def check_consume(verifier: Verifier, sender: str, uris: list[str], proofs: list[bytes]) -> None:
    """PermissionMissing unless the sender owns each URI's namespace or a chain in ``proofs``
    (encoded chains, as grant chain files hold them) lets it consume there (C, C+ or C*)."""
    for uri in uris:
        _check(verifier, sender, uri, consume_right(uri), proofs)


def check_publish(verifier: Verifier, sender: str, uri: str, proofs: list[bytes]) -> None:
    """PermissionMissing unless the sender may publish (P) on ``uri``."""
    _check(verifier, sender, uri, "P", proofs)


class FitOps:
    def __init__(
        self, registry: Registry, uploads: Uploads, jobs: FitJobs, verifier: Verifier
    ) -> None:
        self.registry = registry
        self.uploads = uploads
        self.jobs = jobs
        self.verifier = verifier

    def table(self) -> dict[str, Op[Any]]:
        return {
            "fit.start": Op(FitStartBody, self.start),
            "fit.status": Op(JobBody, self.status),
            "fit.list": Op(FitListBody, self.list_jobs),
            "fit.resume": Op(JobBody, self.resume),
        }

    async def start(self, sender: str, body: FitStartBody) -> dict[str, Any]:
        if not body.streams and body.upload is None:
            raise InvalidRequest("name training streams or an uploaded training file")
        if (
            body.since_ns is not None
            and body.until_ns is not None
            and body.since_ns >= body.until_ns
        ):
            raise InvalidRequest("since_ns must be before until_ns")
        if body.upload is not None and not self.uploads.has_artifact(body.upload):
            raise InvalidRequest(f"no uploaded file {body.upload}; upload it first")
        check_consume(self.verifier, sender, body.streams, body.proofs)
        parent = (
            await self.registry.get_model(body.model, body.from_version)
            if body.from_version is not None
            else await self.registry.current_version(body.model)
        )
        if parent.artifact_kind != "closure":
            await self._check_image_fits(parent)
        job_id = uuid.uuid4().hex[:16]
        new_version = body.new_version or f"{parent.version}-fit-{job_id[:8]}"
        if new_version in [m.version for m in await self.registry.list_models(body.model)]:
            raise Conflict(
                f"{body.model}:{new_version} is registered already; name another new_version",
                model=body.model,
                version=new_version,
            )
        request = body.model_dump(exclude={"op", "proofs"}) | {
            "proofs": [proof.hex() for proof in body.proofs]
        }
        job = await self.registry.create_fit_job(
            job_id,
            model_name=body.model,
            parent_version=parent.version,
            new_version=new_version,
            requester=sender,
            request=request,
        )
        logger.info("fit job %s of %s for %s", job_id, parent.key, sender)
        return self.view(await self.jobs.start(job))

    async def _check_image_fits(self, parent: ModelVersion) -> None:
        """InvalidRequest unless ``parent`` is an image declaring a fit program, on a service
        with a container engine."""
        if parent.artifact_kind != "image" or parent.image is None:
            raise InvalidRequest(f"{parent.key} is served remotely (v2): it cannot be fitted")
        if not self.jobs.fits_images:
            raise InvalidRequest(
                f"{parent.key} is an image and this service has no container engine to fit it in"
            )
        saved = await anyio.to_thread.run_sync(find_saved_image, parent.artifact_path, parent.image)
        if saved.fit_command is None:
            raise InvalidRequest(
                f"{parent.key}'s image declares no fit program: build it FROM the modelbus base "
                f"image with a fittable model, or give it the label {FIT_LABEL} (PROTOCOL §18.9)",
                image=parent.image,
            )

    async def status(self, sender: str, body: JobBody) -> dict[str, Any]:
        return self.view(await self.registry.get_fit_job(body.job))

    async def list_jobs(self, sender: str, body: FitListBody) -> list[dict[str, Any]]:
        return [self.view(job) for job in await self.registry.list_fit_jobs(body.model, body.limit)]

    async def resume(self, sender: str, body: JobBody) -> dict[str, Any]:
        job = await self.registry.get_fit_job(body.job)
        proofs = [bytes.fromhex(proof) for proof in job.request.get("proofs", [])]
        check_consume(self.verifier, job.requester, list(job.request.get("streams", [])), proofs)
        return self.view(await self.jobs.resume(body.job))

    def view(self, job: FitJobRecord) -> dict[str, Any]:
        view = job.view()
        view["pid"] = self.jobs.pid(job.job_id)
        return view


class FittedVersions:
    """Deploys what a fit made (:data:`proxy.fitting.jobs.Deploy`)."""

    def __init__(
        self,
        registry: Registry,
        uploads: Uploads,
        backend: EmbeddedBackend,
        router: VersionRouter,
    ) -> None:
        self.registry = registry
        self.uploads = uploads
        self.backend = backend
        self.router = router

    async def __call__(
        self, job: FitJobRecord, result: bytes, training: Training
    ) -> dict[str, Any]:
        """Store the result, register the new version with its provenance, start it: a
        closure's new archive is the version's artifact; an image version's new state is
        stored beside its image's tarball and named in its metadata (:data:`FIT_STATE_KEY`)."""
        sha = hashlib.sha256(result).hexdigest()
        path = self.uploads.artifact_path(sha)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            spool = path.with_name(f".{sha}.{job.job_id}.tmp")
            spool.write_bytes(result)
            os.chmod(spool, 0o644)  # an image's replicas (user 65534) read it, mounted
            os.replace(spool, path)
        parent = await self.registry.get_model(job.model_name, job.parent_version)
        asked = job.request.get("make_current")
        auto = bool(parent.metadata.get("fit_auto_switch", False)) if asked is None else asked
        metadata = dict(parent.metadata) | training.metadata()
        metadata |= {"parent_version": parent.version, "fit_job": job.job_id}
        if parent.artifact_kind == "image":
            metadata[FIT_STATE_KEY] = sha
            sha, path = parent.artifact_sha256, Path(parent.artifact_path)
        else:
            artifact.check_compatible(artifact.check_archive(path))
        replicas = max(1, parent.desired_replicas)
        model = await self.registry.register_model(
            job.model_name,
            job.new_version,
            input_type=parent.input_type,
            artifact_kind=parent.artifact_kind,
            artifact_sha256=sha,
            artifact_path=str(path),
            image=parent.image,
            labels=parent.labels,
            metadata=metadata,
            batch_size=parent.batch_size,
            desired_replicas=replicas,
            make_current=bool(auto),
        )
        await start_model(self.backend, model, replicas)
        if model.is_current:
            self.router.switch(model.name, model.version)
        return model.to_clipper()
