"""Places and their tree: building → floor → zone or room.

A place is a kind and an identifier (``Place("zone", "A")``, written ``zone=A``). The tree gives
each place at most one parent; the planner uses it twice:

- ranking: a model of the asked place beats a model of its parent, which beats its grandparent's
  (``PlaceTree.distance``); ancestors only answer for types aggregated by mean (a floor's mean
  temperature stands for a zone's; a floor's energy is not a zone's);
- composition: an additive type (``sum``) asked for a place no model covers is the sum of its
  children's answers when every child is covered (``PlaceTree.children``).

``PlaceTree.from_turtle`` reads a Brick model in Turtle from a string the caller supplies (no file
or network I/O here): instances of ``brick:Building``, ``brick:Floor``, ``brick:Room``,
``brick:HVAC_Zone`` and ``brick:Zone`` joined by ``brick:hasPart`` or ``brick:isPartOf``. A place's
identifier is its ``rdfs:label`` when that is a valid id, else the last segment of its IRI.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple

__all__ = ["MAX_PLACES", "Place", "PlaceTree", "PlacesError", "parse_context"]

MAX_PLACES = 100_000
MAX_DEPTH = 16
_KIND = re.compile(r"[a-z][a-z_]{0,31}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_BRICK_KINDS = {
    "Building": "building",
    "Floor": "floor",
    "Room": "room",
    "HVAC_Zone": "zone",
    "Zone": "zone",
}


class PlacesError(ValueError):
    """A malformed place or places tree; ``reason`` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Place(NamedTuple):
    """A kind of place and its identifier: ``Place("zone", "A")``."""

    kind: str
    id: str

    def __str__(self) -> str:
        return f"{self.kind}={self.id}"

    def as_context(self) -> dict[str, str]:
        return {self.kind: self.id}


def parse_context(context: Mapping[str, str] | str) -> Place:
    """``{"zone": "A"}`` or ``"zone=A"`` → ``Place``; exactly one kind and one identifier."""
    if isinstance(context, str):
        kind, sep, ident = context.partition("=")
        if not sep:
            raise PlacesError("a context is written kind=id, e.g. zone=A")
        pairs = [(kind.strip(), ident.strip())]
    elif isinstance(context, Mapping):
        pairs = list(context.items())
    else:
        raise PlacesError("a context is a mapping {kind: id} or a string kind=id")
    if len(pairs) != 1:
        raise PlacesError("a context names exactly one place, e.g. {'zone': 'A'}")
    kind, ident = pairs[0]
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise PlacesError("a place kind is 1-32 lowercase letters or '_' (zone, floor, building)")
    if not isinstance(ident, str) or not _ID.fullmatch(ident):
        raise PlacesError("a place id is 1-64 characters of [A-Za-z0-9_.-], starting alphanumeric")
    return Place(kind, ident)


class PlaceTree:
    """Parent and children of each place; built once, then read-only."""

    def __init__(self, edges: Iterable[tuple[Place, Place]] = ()) -> None:
        """``edges`` are ``(parent, child)`` pairs; a child has one parent, no cycles."""
        self._parent: dict[Place, Place] = {}
        self._children: dict[Place, list[Place]] = {}
        for parent, child in edges:
            self._add(parent, child)
        for place in self._parent:
            self._depth(place)

    def _add(self, parent: Place, child: Place) -> None:
        known = self._parent.get(child)
        if known == parent:
            return
        if known is not None:
            raise PlacesError(f"{child} has two parents: {known} and {parent}")
        if len(self._parent) >= MAX_PLACES:
            raise PlacesError(f"a places tree holds at most {MAX_PLACES} places")
        self._parent[child] = parent
        self._children.setdefault(parent, []).append(child)

    def _depth(self, place: Place) -> int:
        depth, current = 0, place
        while (parent := self._parent.get(current)) is not None:
            depth += 1
            if parent == place or depth > MAX_DEPTH:
                raise PlacesError(f"the places tree has a cycle or is deeper than {MAX_DEPTH}")
            current = parent
        return depth

    def __len__(self) -> int:
        return len(set(self._parent) | set(self._children))

    def __contains__(self, place: object) -> bool:
        return place in self._parent or place in self._children

    def parent(self, place: Place) -> Place | None:
        return self._parent.get(place)

    def children(self, place: Place) -> tuple[Place, ...]:
        """The direct children, sorted (a deterministic composition order)."""
        return tuple(sorted(self._children.get(place, ())))

    def ancestors(self, place: Place) -> tuple[Place, ...]:
        """Parent first, then its parent, up to the root."""
        found: list[Place] = []
        current = self._parent.get(place)
        while current is not None:
            found.append(current)
            current = self._parent.get(current)
        return tuple(found)

    def distance(self, place: Place, ancestor: Place) -> int | None:
        """0 for the place itself, 1 for its parent…; None when ``ancestor`` is not above it."""
        if place == ancestor:
            return 0
        for depth, found in enumerate(self.ancestors(place), start=1):
            if found == ancestor:
                return depth
        return None

    @classmethod
    def from_turtle(cls, text: str) -> PlaceTree:
        """Read a Brick model (Turtle text); see the module docstring for what is read."""
        return cls(_brick_edges(text))


def _brick_edges(text: str) -> list[tuple[Place, Place]]:
    import rdflib  # the one module that reads RDF
    from rdflib.namespace import RDF, RDFS

    graph = rdflib.Graph()
    try:
        graph.parse(data=text, format="turtle")
    except Exception as exc:  # rdflib raises many types for bad syntax
        raise PlacesError(f"the Brick model is not valid Turtle ({type(exc).__name__})") from exc
    places: dict[object, Place] = {}
    for node, brick_class in graph.subject_objects(RDF.type):
        kind = _BRICK_KINDS.get(_brick_name(brick_class) or "")
        if kind is not None:
            label = graph.value(node, RDFS.label)
            names = [str(label)] if label is not None else []
            ident = next((n for n in [*names, _local_name(node)] if _ID.fullmatch(n)), None)
            if ident is None:
                raise PlacesError(f"{kind} {str(node)[:80]!r} has no usable identifier")
            places[node] = Place(kind, ident)
    edges: list[tuple[Place, Place]] = []
    for subject, predicate, obj in graph:
        relation = _brick_name(predicate)
        if subject in places and obj in places and relation in ("hasPart", "isPartOf"):
            pair = (subject, obj) if relation == "hasPart" else (obj, subject)
            edges.append((places[pair[0]], places[pair[1]]))
    return sorted(set(edges))


def _local_name(node: object) -> str:
    return re.split(r"[#/:]", str(node))[-1]


def _brick_name(node: object) -> str | None:
    """The local name of a Brick IRI (any Brick version's namespace), else None."""
    text = str(node)
    return _local_name(text) if "brickschema.org/schema/" in text else None
