"""Metadata checked at deploy: a map with ``type`` must be valid model metadata, every bad field
listed (bounded); a map without ``type`` stays free."""

from __future__ import annotations

import pytest

from bus.errors import InvalidRequest
from proxy.service.forecast.metadata import MAX_FIELD_ERRORS, check_metadata
from tests.proxy.service.forecast.helpers import meta


def test_free_metadata_passes_and_valid_metadata_parses() -> None:
    assert check_metadata({"owner": "ops", "anything": [1, 2]}) is None
    parsed = check_metadata(meta(0, 10, training_streams=["ns/soda/temp"], cache_ttl_s=60))
    assert parsed is not None and parsed.type == "thermal" and parsed.cache_ttl_s == 60


def test_every_bad_field_is_listed() -> None:
    bad = meta(0, 10) | {"resolution_s": 0, "training_streams": ["not a uri/+/#"], "extra": 1}
    with pytest.raises(InvalidRequest) as caught:
        check_metadata(bad)
    fields = {item["field"] for item in caught.value.details["fields"]}
    assert {"resolution_s", "training_streams.0", "extra"} <= fields
    assert "resolution_s" in caught.value.message


def test_the_list_is_bounded() -> None:
    bad = meta(0, 10) | {f"extra{n}": n for n in range(50)}
    with pytest.raises(InvalidRequest) as caught:
        check_metadata(bad)
    assert len(caught.value.details["fields"]) == MAX_FIELD_ERRORS
