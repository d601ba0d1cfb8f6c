"""Model versions, the current version of each model, and stopping, as Clipper manages them.

A version ``(name, version)`` is immutable once registered (a trigger guards the columns) and
is never deleted: stopping only marks it, so any version can be made current again.

Current versions, like Clipper: registering a version makes it current (Clipper's ``add_model``
always does; the deploy path's "previous version serves until a replica of the new one is
ready" is the backend's business). ``make_current=False`` opts out, except for a model's first
version, which is always current — every registered model has one. Each change pushes onto a
per-model stack whose top is current; :meth:`ModelStore.rollback` pops it.

While a model is linked to an application, a version with another input type can be neither
registered, made current nor rolled back to (Clipper's check).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from bus.errors import Conflict, InvalidRequest, NotFound
from proxy.registry.records import ADAPTIVE_BATCH_SIZE, InputType, ModelKind, ModelVersion
from proxy.registry.sql import (
    Database,
    Session,
    build,
    check_links_accept,
    current_version_of,
    find_model,
    find_versions,
    to_json,
)

__all__ = ["ModelStore"]


class ModelStore:
    """Versions, current versions, stopping: that part of
    :class:`proxy.registry.registry.Registry`."""

    _db: Database
    models_generation: int = 0
    """Counts the committed changes to versions, current versions and stopping in this process:
    what is derived from the models (the chooser's index) is valid while its generation is."""

    @asynccontextmanager
    async def _changing_models(self) -> AsyncIterator[Session]:
        """A write transaction that changes models: counted once committed."""
        async with self._db.write() as session:
            yield session
        self.models_generation += 1

    async def register_model(
        self,
        name: str,
        version: str,
        *,
        input_type: InputType,
        artifact_kind: ModelKind,
        artifact_sha256: str,
        artifact_path: str,
        image: str | None = None,
        labels: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
        batch_size: int = ADAPTIVE_BATCH_SIZE,
        desired_replicas: int = 1,
        make_current: bool = True,
    ) -> ModelVersion:
        """Clipper's ``deploy_model``/``register_model``; an existing version is a Conflict."""
        async with self._changing_models() as s:
            model = build(
                ModelVersion,
                name=name,
                version=version,
                input_type=input_type,
                labels=labels,
                metadata={} if metadata is None else metadata,
                artifact_kind=artifact_kind,
                artifact_sha256=artifact_sha256,
                artifact_path=artifact_path,
                image=image,
                batch_size=batch_size,
                desired_replicas=desired_replicas,
                is_current=False,
                stopped_ns=None,
                created_ns=s.clock(),
            )
            if await s.row("SELECT 1 FROM models WHERE name = ? AND version = ?", (name, version)):
                raise Conflict(
                    f"model {name!r} version {version!r} is already registered; versions are "
                    "immutable, so register a new version instead",
                    model=name,
                    version=version,
                )
            await check_links_accept(s, name, input_type)
            await s.exec(
                "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                (
                    *(name, version, input_type, to_json(list(model.labels))),
                    *(to_json(model.metadata), artifact_kind, artifact_sha256, artifact_path),
                    *(image, batch_size, desired_replicas, model.created_ns),
                ),
            )
            if make_current or await current_version_of(s, name) is None:
                await _push_current(s, name, version)
            return await find_model(s, name, version)

    async def get_model(self, name: str, version: str) -> ModelVersion:
        """Clipper's ``get_model_info`` (``.to_clipper()`` gives its answer)."""
        async with self._db.read() as s:
            return await find_model(s, name, version)

    async def list_models(
        self, name: str | None = None, *, current_only: bool = False
    ) -> list[ModelVersion]:
        """Clipper's ``get_all_models``: every version of one model, or of all of them."""
        async with self._db.read() as s:
            models = await find_versions(s, name)
        return [model for model in models if model.is_current or not current_only]

    async def current_version(self, name: str) -> ModelVersion:
        """Clipper's ``get_current_model_version`` (the whole record)."""
        async with self._db.read() as s:
            version = await current_version_of(s, name)
            if version is None:
                raise NotFound(f"no model named {name!r}", model=name)
            return await find_model(s, name, version)

    async def set_current(
        self, name: str, version: str, *, desired_replicas: int | None = None
    ) -> ModelVersion:
        """Clipper's ``set_model_version``, with its optional ``num_replicas``."""
        async with self._changing_models() as s:
            model = await find_model(s, name, version)
            await check_links_accept(s, name, model.input_type)
            if await current_version_of(s, name) != version:
                await _push_current(s, name, version)
            if desired_replicas is not None:
                await _set_desired(s, name, version, desired_replicas)
            return await find_model(s, name, version)

    async def rollback(self, name: str) -> ModelVersion:
        """Make current again the version that was current before this one; returns it."""
        async with self._changing_models() as s:
            rows = await s.rows(
                "SELECT seq, version FROM current_versions WHERE model_name = ? "
                "ORDER BY seq DESC LIMIT 2",
                (name,),
            )
            if not rows:
                raise NotFound(f"no model named {name!r}", model=name)
            if len(rows) < 2:
                raise Conflict(
                    f"model {name!r} has no earlier current version to roll back to "
                    f"(current: {rows[0]['version']!r})",
                    model=name,
                    version=rows[0]["version"],
                )
            previous = await find_model(s, name, rows[1]["version"])
            await check_links_accept(s, name, previous.input_type)
            await s.exec("DELETE FROM current_versions WHERE seq = ?", (rows[0]["seq"],))
            return await find_model(s, name, previous.version)

    async def set_desired_replicas(self, name: str, version: str, count: int) -> ModelVersion:
        """Clipper's ``set_num_replicas``; a positive count also un-stops the version."""
        async with self._changing_models() as s:
            await find_model(s, name, version)
            await _set_desired(s, name, version, count)
            return await find_model(s, name, version)

    # Stopping: each call returns the versions it newly stopped, for the backend to act on.

    async def stop_versions(self, versions: Mapping[str, Iterable[str]]) -> list[ModelVersion]:
        """Clipper's ``stop_versioned_models``: ``{name: [version, ...]}``, all or none."""
        async with self._changing_models() as s:
            pairs = [(name, version) for name, listed in versions.items() for version in listed]
            for name, version in pairs:
                await find_model(s, name, version)
            return await _stop(s, pairs)

    async def stop_models(self, names: Iterable[str]) -> list[ModelVersion]:
        """Clipper's ``stop_models``: every version of each named model."""
        async with self._changing_models() as s:
            return await _stop(s, await _versions_of(s, names, inactive_only=False))

    async def stop_inactive_versions(self, names: Iterable[str]) -> list[ModelVersion]:
        """Clipper's ``stop_inactive_model_versions``: every version but the current one."""
        async with self._changing_models() as s:
            return await _stop(s, await _versions_of(s, names, inactive_only=True))

    async def stop_all_versions(self) -> list[ModelVersion]:
        """Clipper's ``stop_all_model_containers``."""
        async with self._changing_models() as s:
            return await _stop(s, [(m.name, m.version) for m in await find_versions(s, None)])

    async def unstop_version(self, name: str, version: str) -> ModelVersion:
        async with self._changing_models() as s:
            await find_model(s, name, version)
            await s.exec(
                "UPDATE models SET stopped_ns = NULL WHERE name = ? AND version = ?",
                (name, version),
            )
            return await find_model(s, name, version)


async def _push_current(s: Session, name: str, version: str) -> None:
    await s.exec(
        "INSERT INTO current_versions (model_name, version, set_ns) VALUES (?, ?, ?)",
        (name, version, s.clock()),
    )


async def _set_desired(s: Session, name: str, version: str, count: int) -> None:
    if count < 0:
        raise InvalidRequest(f"a replica count cannot be negative ({count})", count=count)
    await s.exec(
        "UPDATE models SET desired_replicas = ?, "
        "stopped_ns = CASE WHEN ? > 0 THEN NULL ELSE stopped_ns END "
        "WHERE name = ? AND version = ?",
        (count, count, name, version),
    )


async def _versions_of(
    s: Session, names: Iterable[str], *, inactive_only: bool
) -> list[tuple[str, str]]:
    pairs = []
    for name in names:
        models = await find_versions(s, name)
        if not models:
            raise NotFound(f"no model named {name!r}", model=name)
        pairs += [(m.name, m.version) for m in models if not (inactive_only and m.is_current)]
    return pairs


async def _stop(s: Session, pairs: Iterable[tuple[str, str]]) -> list[ModelVersion]:
    now, stopped = s.clock(), []
    for name, version in pairs:
        changed = await s.exec(
            "UPDATE models SET stopped_ns = ? "
            "WHERE name = ? AND version = ? AND stopped_ns IS NULL",
            (now, name, version),
        )
        if changed:
            stopped.append(await find_model(s, name, version))
    return stopped
