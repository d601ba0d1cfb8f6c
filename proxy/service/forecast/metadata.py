"""Model metadata checked where it enters: ``model.deploy``.

The registry stores a version's ``metadata`` map as given (free JSON). A map with a ``type`` key
declares that the model serves the range API (DESIGN §6, ``bus/PROTOCOL.md`` §17.8): it must then
be valid :class:`chooser.ModelMetadata` as a whole (no other keys), or the deploy is refused with
``invalid_request`` whose details list every bad field. A map without ``type`` stays free.
"""

from __future__ import annotations

from typing import Any

from bus.errors import InvalidRequest
from chooser import MetadataError, ModelMetadata

__all__ = ["MAX_FIELD_ERRORS", "check_metadata", "serves_range_api"]

MAX_FIELD_ERRORS = 20
_MAX_FIELD_CHARS = 120


def serves_range_api(metadata: dict[str, Any]) -> bool:
    return "type" in metadata


def check_metadata(metadata: dict[str, Any]) -> ModelMetadata | None:
    """The parsed metadata of a range-API model, None for free metadata; InvalidRequest with
    details ``{"fields": [{"field", "problem"}, ...]}`` when it declares the API badly."""
    if not serves_range_api(metadata):
        return None
    try:
        return ModelMetadata.parse(metadata)
    except MetadataError as exc:
        fields = [
            {"field": field[:_MAX_FIELD_CHARS], "problem": problem[:200]}
            for field, problem in exc.errors[:MAX_FIELD_ERRORS]
        ]
        listed = "; ".join(f"{item['field']}: {item['problem']}" for item in fields)
        raise InvalidRequest(
            f"the model metadata declares the range API (it has 'type') but is invalid: {listed}",
            fields=fields,
        ) from None
