"""Places: contexts, the tree and its Brick (Turtle) source."""

from __future__ import annotations

import pytest

from chooser import Place, PlacesError, PlaceTree, parse_context
from tests.chooser.helpers import SODA_TTL

SODA = Place("building", "soda")
FLOOR1, FLOOR2 = Place("floor", "1"), Place("floor", "2")
A, B, C, D = Place("zone", "A"), Place("zone", "B"), Place("zone", "C"), Place("room", "D")


def test_contexts_parse_from_mappings_and_strings() -> None:
    assert parse_context({"zone": "A"}) == A
    assert parse_context("floor = 2") == FLOOR2
    assert str(A) == "zone=A" and A.as_context() == {"zone": "A"}


@pytest.mark.parametrize(
    "context", ["zone", {}, {"zone": "A", "floor": "1"}, {"Zone": "A"}, {"zone": ""}, {"zone": 3},
                "zone=A/B", 42],
)  # fmt: skip
def test_bad_contexts(context: object) -> None:
    with pytest.raises(PlacesError):
        parse_context(context)  # type: ignore[arg-type]


def test_the_brick_model_gives_the_tree() -> None:
    tree = PlaceTree.from_turtle(SODA_TTL)
    assert len(tree) == 7
    assert tree.children(SODA) == (FLOOR1, FLOOR2)
    assert tree.children(FLOOR1) == (A, B)
    assert tree.children(FLOOR2) == (D, C)  # sorted by (kind, id): room before zone
    assert tree.ancestors(D) == (FLOOR2, SODA)
    assert tree.distance(A, SODA) == 2 and tree.distance(A, A) == 0
    assert tree.distance(A, FLOOR2) is None
    assert Place("zone", "sensor1") not in tree  # a sensor is not a place


def test_bad_turtle_is_a_places_error() -> None:
    with pytest.raises(PlacesError, match="not valid Turtle"):
        PlaceTree.from_turtle("this is @not turtle .")


def test_two_parents_and_cycles_are_refused() -> None:
    with pytest.raises(PlacesError, match="two parents"):
        PlaceTree([(FLOOR1, A), (FLOOR2, A)])
    with pytest.raises(PlacesError, match="cycle"):
        PlaceTree([(FLOOR1, A), (A, FLOOR1)])


def test_a_label_that_is_no_identifier_falls_back_to_the_iri() -> None:
    text = """@prefix brick: <https://brickschema.org/schema/1.1/Brick#> .
    @prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .
    <urn:x#F3> a brick:Floor ; rdfs:label "Third floor" ; brick:hasPart <urn:x#Z9> .
    <urn:x#Z9> a brick:Zone .
    <urn:x#bad%20name> a brick:Room ; brick:isPartOf <urn:x#F3> ; rdfs:label "R 1" .
    """
    with pytest.raises(PlacesError, match="no usable identifier"):
        PlaceTree.from_turtle(text)
    tree = PlaceTree.from_turtle(text.replace("bad%20name", "R1"))
    assert tree.children(Place("floor", "F3")) == (Place("room", "R1"), Place("zone", "Z9"))
