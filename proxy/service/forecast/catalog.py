"""The chooser's candidate index, derived from the registry and kept in step with it.

The registry owns the models; it counts every committed change to them
(``Registry.models_generation``: deploys, current-version changes, rollbacks, stops). The
catalog rebuilds its index from the registry whenever that count moved since it last read it —
so a deploy, a ``model.set_version``, a rollback or a stop is seen by the next query, and no
operation has to remember to tell the catalog. A version is a candidate when its metadata
declares the range API (:mod:`.metadata`) and it is not stopped; its metadata is parsed once
(versions are immutable). A stored map that no longer parses (written by an older service) is
left out and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import anyio

from bus.errors import InvalidRequest
from chooser import Candidate, CandidateIndex, ModelMetadata, ModelRef
from proxy.registry.registry import Registry
from proxy.service.forecast.metadata import check_metadata

__all__ = ["Catalog"]

logger = logging.getLogger(__name__)


class Catalog:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._index = CandidateIndex()
        self._generation = -1
        self._metadata: dict[ModelRef, ModelMetadata] = {}
        self._lock = anyio.Lock()
        self.rebuilds = 0

    async def index(self) -> CandidateIndex:
        """The index as of the registry's latest committed change."""
        if self._generation != self._registry.models_generation:
            async with self._lock:
                if self._generation != self._registry.models_generation:
                    await self._rebuild()
        return self._index

    def metadata(self, ref: ModelRef) -> ModelMetadata | None:
        """A candidate's parsed metadata (None: not a candidate when last rebuilt)."""
        return self._metadata.get(ref)

    async def _rebuild(self) -> None:
        generation = self._registry.models_generation  # read first: a later change rebuilds again
        models = await self._registry.list_models(None)
        index = CandidateIndex()
        found: dict[ModelRef, ModelMetadata] = {}
        for model in models:
            ref = ModelRef(model.name, model.version)
            parsed = self._metadata.get(ref) or self._parse(ref, model.metadata)
            if parsed is None:
                continue
            found[ref] = parsed
            if not model.is_stopped:
                index.add(Candidate(ref, parsed, model.created_ns), is_current=model.is_current)
        self._index, self._metadata, self._generation = index, found, generation
        self.rebuilds += 1

    @staticmethod
    def _parse(ref: ModelRef, metadata: Mapping[str, object]) -> ModelMetadata | None:
        try:
            return check_metadata(dict(metadata))
        except InvalidRequest as error:
            logger.warning("%s is left out of the chooser: %s", ref, error.message)
            return None
