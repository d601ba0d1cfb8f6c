"""Building blocks for the chooser tests: metadata, candidates and queries in a few words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chooser import Candidate, CandidateIndex, ModelMetadata, ModelRef, Query

LA = "America/Los_Angeles"
SODA_TTL = (Path(__file__).parent / "soda.ttl").read_text()


def meta(
    ranges: list[tuple[str, str]] | None = None,
    *,
    model_type: str = "thermal",
    context: str = "zone=A",
    resolution_s: int = 900,
    rules: list[dict[str, Any]] | None = None,
    timezone: str = LA,
    **extra: Any,
) -> ModelMetadata:
    """Metadata with a coverage of ``ranges`` (local times in ``timezone``) and ``rules``."""
    kind, _, ident = context.partition("=")
    data: dict[str, Any] = {
        "type": model_type,
        "context": {kind: ident},
        "resolution_s": resolution_s,
        **extra,
    }
    if not extra.get("has_can_predict"):
        data["coverage"] = {
            "timezone": timezone,
            "ranges": [{"start": start, "end": end} for start, end in ranges or []],
            "rules": rules or [],
        }
    return ModelMetadata.parse(data)


def index_of(*models: tuple[str, ModelMetadata]) -> CandidateIndex:
    """An index of ``(name, metadata)`` models, version "1", deployed in the order given."""
    index = CandidateIndex()
    for created, (name, metadata) in enumerate(models):
        index.add(Candidate(ModelRef(name, "1"), metadata, created_ns=created))
    return index


def day_query(
    day: str = "2018-01-30",
    next_day: str = "2018-01-31",
    granularity: str = "30min",
    *,
    model_type: str = "thermal",
    context: str = "zone=A",
    zone: str = LA,
) -> Query:
    """One local day in ``zone``, by ``granularity``."""
    return Query.parse(
        model_type, context, f"{day} 00:00 {zone}", f"{next_day} 00:00 {zone}", granularity
    )


def ranged(first_hour: int, last_hour: int, **kwargs: Any) -> ModelMetadata:
    """A model covering 2018-01-30 from ``first_hour`` to ``last_hour`` (24: midnight after), LA."""
    end = f"2018-01-30 {last_hour:02}:00" if last_hour < 24 else "2018-01-31 00:00"
    return meta([(f"2018-01-30 {first_hour:02}:00", end)], **kwargs)
