"""The candidate index: exact lookup, current versions, removal, access filtering."""

from __future__ import annotations

from typing import Any

from chooser import Candidate, CandidateIndex, ModelRef, Place
from tests.chooser.helpers import meta

WHOLE = [("2018-01-01 00:00", "2019-01-01 00:00")]
A = Place("zone", "A")


def candidate(name: str, version: str = "1", **kwargs: Any) -> Candidate:
    return Candidate(ModelRef(name, version), meta(WHOLE, **kwargs), created_ns=0)


def test_find_is_by_type_and_exact_place() -> None:
    index = CandidateIndex()
    index.add(candidate("a"))
    index.add(candidate("b", context="zone=B"))
    index.add(candidate("c", model_type="consumption"))
    assert [c.ref.name for c in index.find("thermal", A)] == ["a"]
    assert index.find("thermal", Place("floor", "1")) == ()
    assert index.find("weather", A) == ()
    assert len(index) == 3 and {c.ref.name for c in index} == {"a", "b", "c"}


def test_the_latest_deployment_is_current_until_told_otherwise() -> None:
    index = CandidateIndex()
    index.add(candidate("m", "1"))
    index.add(candidate("m", "2"))
    assert [(c.ref.version, c.is_current) for c in index.find("thermal", A)] == [
        ("1", False),
        ("2", True),
    ]
    index.set_current("m", "1")
    assert [c.is_current for c in index.find("thermal", A)] == [True, False]
    index.set_current("m", None)
    assert not any(c.is_current for c in index.find("thermal", A))


def test_remove_forgets_the_model_and_its_current_mark() -> None:
    index = CandidateIndex()
    index.add(candidate("m", "1"))
    index.remove(ModelRef("m", "1"))
    index.remove(ModelRef("m", "1"))  # idempotent
    assert len(index) == 0 and index.find("thermal", A) == ()
    index.add(candidate("m", "1"), is_current=False)
    assert not index.find("thermal", A)[0].is_current


def test_re_adding_a_ref_moves_it() -> None:
    index = CandidateIndex()
    index.add(candidate("m"))
    index.add(candidate("m", context="zone=B"))
    assert index.find("thermal", A) == ()
    assert len(index) == 1


def test_usable_filters_at_lookup() -> None:
    index = CandidateIndex()
    index.add(candidate("open"))
    index.add(candidate("secret"))
    found = index.find("thermal", A, usable=lambda c: c.ref.name != "secret")
    assert [c.ref.name for c in found] == ["open"]
