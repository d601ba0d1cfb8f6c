"""The candidate index: models by (type, place kind, place id), with each name's current version.

Finding the candidates of a query is a dictionary lookup per place asked (the place, its ancestors,
its children when composing), never a scan of every model. The wiring keeps the index in step with
the registry (``add`` on deploy, ``remove`` on delete, ``set_current`` when a name's current version
changes) and filters what a requester may use before planning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from chooser.metadata import ModelMetadata
from chooser.places import Place

__all__ = ["Candidate", "CandidateIndex", "ModelRef"]


@dataclass(frozen=True, slots=True, order=True)
class ModelRef:
    """A deployed model: ``(name, version)``, unique and immutable."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True, slots=True)
class Candidate:
    """A model the planner may choose: its metadata, whether its version is its name's current one
    (filled in by the index when found), and when it was deployed (``created_ns``, newest wins)."""

    ref: ModelRef
    metadata: ModelMetadata
    created_ns: int
    is_current: bool = False

    @property
    def place(self) -> Place:
        return self.metadata.place


Key = tuple[str, str, str]


class CandidateIndex:
    """Candidates by ``(type, kind, id)``; current versions by name."""

    def __init__(self) -> None:
        self._by_key: dict[Key, dict[ModelRef, Candidate]] = {}
        self._keys: dict[ModelRef, Key] = {}
        self._current: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[Candidate]:
        for bucket in self._by_key.values():
            yield from (self._with_current(candidate) for candidate in bucket.values())

    def add(self, candidate: Candidate, *, is_current: bool = True) -> None:
        """Index a model (replacing one of the same ref); by default it becomes its name's current
        version, as a fresh deployment does."""
        self.remove(candidate.ref)
        place = candidate.place
        key = (candidate.metadata.type, place.kind, place.id)
        self._by_key.setdefault(key, {})[candidate.ref] = candidate
        self._keys[candidate.ref] = key
        if is_current:
            self._current[candidate.ref.name] = candidate.ref.version

    def remove(self, ref: ModelRef) -> None:
        key = self._keys.pop(ref, None)
        if key is not None:
            bucket = self._by_key[key]
            del bucket[ref]
            if not bucket:
                del self._by_key[key]
        if self._current.get(ref.name) == ref.version:
            del self._current[ref.name]

    def set_current(self, name: str, version: str | None) -> None:
        """``version`` becomes ``name``'s current version (None: it has none)."""
        if version is None:
            self._current.pop(name, None)
        else:
            self._current[name] = version

    def find(
        self,
        model_type: str,
        place: Place,
        usable: Callable[[Candidate], bool] | None = None,
    ) -> tuple[Candidate, ...]:
        """The candidates of ``model_type`` whose context is exactly ``place``, those ``usable``
        accepts (the requester's access), sorted by ref, ``is_current`` set."""
        bucket = self._by_key.get((model_type, place.kind, place.id))
        if not bucket:
            return ()
        found = (self._with_current(candidate) for _, candidate in sorted(bucket.items()))
        return tuple(c for c in found if usable is None or usable(c))

    def _with_current(self, candidate: Candidate) -> Candidate:
        is_current = self._current.get(candidate.ref.name) == candidate.ref.version
        if is_current == candidate.is_current:
            return candidate
        return replace(candidate, is_current=is_current)
