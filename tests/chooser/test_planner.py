"""Planning: the best model per point, segments, fallbacks, gaps, verdicts and composition."""

from __future__ import annotations

from chooser import (
    Candidate,
    ModelRef,
    Place,
    PlaceTree,
    Plan,
    VerdictRequest,
    parse_instant,
    plan,
    verdict_requests,
)
from chooser.timegrid import to_ns
from tests.chooser.helpers import LA, SODA_TTL, day_query, index_of, meta, ranged

DAY = "2018-01-30"


def at(local: str, zone: str = LA) -> int:
    return to_ns(parse_instant(f"{local} {zone}"))


def hour(h: int, day: str = DAY) -> int:
    return at(f"{day} {h:02}:00") if h < 24 else at("2018-01-31 00:00")


def layout(result: Plan) -> list[tuple[int, int, str]]:
    """Segments and gaps in order: (start, end, model name or 'gap')."""
    rows = [(s.start_ns, s.end_ns, s.model.name) for s in result.segments]
    rows += [(g.start_ns, g.end_ns, "gap") for g in result.gaps]
    rows += [(c.start_ns, c.end_ns, "composed") for c in result.compositions]
    return sorted(rows)


def test_adjacent_ranges_join_without_a_gap() -> None:
    index = index_of(("morning", ranged(0, 12)), ("evening", ranged(12, 24)))
    assert layout(plan(day_query(), index)) == [
        (hour(0), hour(12), "morning"),
        (hour(12), hour(24), "evening"),
    ]


def test_overlap_goes_to_the_newest_and_the_older_is_the_fallback() -> None:
    index = index_of(("all-day", ranged(0, 24)), ("daytime", ranged(8, 18)))
    result = plan(day_query(), index)
    assert layout(result) == [
        (hour(0), hour(8), "all-day"),
        (hour(8), hour(18), "daytime"),
        (hour(18), hour(24), "all-day"),
    ]
    middle = result.segments[1]
    assert [choice.ref.name for choice in middle.choices] == ["daytime", "all-day"]
    assert result.segments[0].fallbacks == ()
    assert len(result.calls()) == 3


def test_a_gap_is_stated_where_no_model_covers() -> None:
    index = index_of(("a", ranged(0, 10)), ("b", ranged(14, 24)))
    result = plan(day_query(), index)
    assert layout(result)[1] == (hour(10), hour(14), "gap")
    assert result.gaps[0].reason == "no usable model can predict this time"


def test_no_candidate_at_all_is_one_gap() -> None:
    result = plan(day_query(context="zone=Q"), index_of(("a", ranged(0, 24))))
    assert layout(result) == [(hour(0), hour(24), "gap")]
    assert "no usable thermal model" in result.gaps[0].reason


def test_the_current_version_beats_a_newer_one() -> None:
    index = index_of(("m", ranged(0, 24)))
    index.add(Candidate(ModelRef("m", "2"), ranged(0, 24), created_ns=10), is_current=False)
    assert plan(day_query(), index).segments[0].model == ModelRef("m", "1")
    index.set_current("m", "2")
    assert plan(day_query(), index).segments[0].model == ModelRef("m", "2")


def test_ties_break_by_name() -> None:
    index = index_of(("b", ranged(0, 24)))
    index.add(Candidate(ModelRef("a", "1"), ranged(0, 24), created_ns=0))
    assert [c.ref.name for c in plan(day_query(), index).segments[0].choices] == ["a", "b"]


def test_the_most_specific_place_wins_and_an_ancestor_fills_in() -> None:
    tree = PlaceTree.from_turtle(SODA_TTL)
    index = index_of(("zone-a", ranged(6, 18)), ("floor-1", ranged(0, 24, context="floor=1")))
    assert layout(plan(day_query(), index, tree)) == [
        (hour(0), hour(6), "floor-1"),
        (hour(6), hour(18), "zone-a"),
        (hour(18), hour(24), "floor-1"),
    ]
    assert layout(plan(day_query(), index))[0][2] == "gap"  # no tree: no ancestor


def test_an_ancestor_never_answers_an_additive_type() -> None:
    tree = PlaceTree.from_turtle(SODA_TTL)
    index = index_of(("floor-1", ranged(0, 24, model_type="consumption", context="floor=1")))
    result = plan(day_query(model_type="consumption"), index, tree)
    assert layout(result) == [(hour(0), hour(24), "gap")]


def test_resolution_must_be_no_coarser_than_the_step_and_divide_it() -> None:
    index = index_of(("hourly", ranged(0, 24, resolution_s=3600)))
    result = plan(day_query(granularity="30min"), index)
    assert layout(result) == [(hour(0), hour(24), "gap")]
    assert "resolution" in result.gaps[0].reason
    assert layout(plan(day_query(granularity="1h"), index)) == [(hour(0), hour(24), "hourly")]
    twenty = index_of(("twenty", ranged(0, 24, resolution_s=1200)))
    assert layout(plan(day_query(granularity="30min"), twenty))[0][2] == "gap"
    assert layout(plan(day_query(granularity="1h"), twenty))[0][2] == "twenty"


def test_day_steps_on_dst_days_need_a_resolution_dividing_23_and_25_hours() -> None:
    whole = [("2018-03-01 00:00", "2018-04-01 00:00")]
    index = index_of(("quarter", meta(whole)), ("two-hourly", meta(whole, resolution_s=7200)))
    result = plan(day_query("2018-03-10", "2018-03-13", "1d"), index)
    names = [name for _, _, name in layout(result)]
    assert names == ["two-hourly", "quarter", "two-hourly"]  # the 23-hour day: 15-minute model


def test_recurring_rules_on_a_weekday() -> None:
    office = meta(rules=[{"days": [0, 1, 2, 3, 4], "hours": list(range(8, 18))}])
    result = plan(day_query(), index_of(("office", office)))  # 2018-01-30 is a Tuesday
    assert layout(result) == [
        (hour(0), hour(8), "gap"),
        (hour(8), hour(18), "office"),
        (hour(18), hour(24), "gap"),
    ]
    weekend = plan(day_query("2018-02-03", "2018-02-04"), index_of(("office", office)))
    assert [name for _, _, name in layout(weekend)] == ["gap"]


def test_a_rule_hour_repeated_by_the_fall_dst_change_covers_two_hours() -> None:
    night = meta(rules=[{"hours": [1], "months": [11]}])
    result = plan(day_query("2018-11-04", "2018-11-05"), index_of(("night", night)))
    (segment,) = result.segments
    assert (segment.end_ns - segment.start_ns) == 2 * 3600 * 10**9
    assert segment.start_ns == at("2018-11-04 01:00")
    spring = plan(
        day_query("2018-03-11", "2018-03-12"), index_of(("n", meta(rules=[{"hours": [2]}])))
    )
    assert spring.segments == ()  # 02:00 does not exist that day


def test_ranges_in_one_zone_and_a_query_in_another() -> None:
    utc_day = meta([("2018-03-11 08:00", "2018-03-12 07:00")], timezone="UTC")
    result = plan(day_query("2018-03-11", "2018-03-12"), index_of(("utc", utc_day)))
    assert layout(result) == [(at("2018-03-11 00:00"), at("2018-03-12 00:00"), "utc")]
    assert len(result.grid) == 46


def test_usable_filters_models_out_of_plans_and_reasons() -> None:
    index = index_of(("secret", ranged(0, 24)))
    hidden = plan(day_query(), index, usable=lambda c: c.ref.name != "secret")
    assert layout(hidden) == [(hour(0), hour(24), "gap")]
    assert hidden.gaps == plan(day_query(), index_of()).gaps  # as if it did not exist
    assert "secret" not in repr(hidden)
    assert "no usable thermal model" in hidden.gaps[0].reason


def test_can_predict_verdicts_fill_what_they_allow() -> None:
    flexible = meta(has_can_predict=True)
    index = index_of(("a", ranged(0, 10)), ("b", ranged(14, 24)), ("flex", flexible))
    query = day_query()
    requests = verdict_requests(query, index)
    ref = ModelRef("flex", "1")
    assert requests[0] == VerdictRequest(ref, hour(0), hour(24), 1800)
    spans = [(r.start_ns, r.end_ns) for r in requests[1:]]
    assert spans == [(hour(0), hour(10)), (hour(10), hour(14)), (hour(14), hour(24))]
    allowed = {r: (r.start_ns, r.end_ns) == (hour(10), hour(14)) for r in requests}
    assert layout(plan(query, index, verdicts=allowed)) == [
        (hour(0), hour(10), "a"),
        (hour(10), hour(14), "flex"),
        (hour(14), hour(24), "b"),
    ]
    assert layout(plan(query, index, verdicts={}))[1][2] == "gap"  # no verdict: cannot
    everything = plan(query, index, verdicts=lambda request: request.end_ns - request.start_ns > 0)
    assert {name for _, _, name in layout(everything)} == {"flex"}  # newest, and all day


def test_an_additive_place_is_composed_from_all_its_children() -> None:
    tree = PlaceTree.from_turtle(SODA_TTL)
    index = index_of(
        ("a", ranged(0, 24, model_type="consumption", context="zone=A")),
        ("b-day", ranged(0, 12, model_type="consumption", context="zone=B")),
        ("b-night", ranged(12, 24, model_type="consumption", context="zone=B")),
        ("floor", ranged(20, 24, model_type="consumption", context="floor=1")),
    )
    result = plan(day_query(model_type="consumption", context="floor=1"), index, tree)
    assert layout(result) == [(hour(0), hour(20), "composed"), (hour(20), hour(24), "floor")]
    (composition,) = result.compositions
    assert [part.place for part in composition.parts] == [Place("zone", "A"), Place("zone", "B")]
    assert [s.model.name for s in composition.parts[1].segments] == ["b-day", "b-night"]
    assert result.is_composed
    assert {s.model.name for s in result.calls()} == {"a", "b-day", "b-night", "floor"}


def test_no_composition_when_a_child_is_missing_or_the_type_is_a_mean() -> None:
    tree = PlaceTree.from_turtle(SODA_TTL)
    only_a = index_of(("a", ranged(0, 24, model_type="consumption", context="zone=A")))
    result = plan(day_query(model_type="consumption", context="floor=1"), only_a, tree)
    assert layout(result) == [(hour(0), hour(24), "gap")]
    both = index_of(("a", ranged(0, 24)), ("b", ranged(0, 24, context="zone=B")))
    thermal = plan(day_query(context="floor=1"), both, tree)
    assert not thermal.is_composed and len(thermal.gaps) == 1


def test_composition_recurses_down_the_tree() -> None:
    tree = PlaceTree.from_turtle(SODA_TTL)
    zones = [f"zone={z}" for z in "ABC"] + ["room=D"]
    index = index_of(*[(z, ranged(0, 24, model_type="consumption", context=z)) for z in zones])
    result = plan(day_query(model_type="consumption", context="building=soda"), index, tree)
    (composition,) = result.compositions
    assert [part.place for part in composition.parts] == [Place("floor", "1"), Place("floor", "2")]
    assert all(part.is_composed for part in composition.parts)
    assert len(result.calls()) == 4


def test_each_gap_run_carries_its_own_reason() -> None:
    index = index_of(("a", ranged(0, 6)), ("hourly", ranged(12, 24, resolution_s=3600)))
    result = plan(day_query(), index)
    assert [(g.start_ns, g.end_ns, g.reason) for g in result.gaps] == [
        (hour(6), hour(12), "no usable model can predict this time"),
        (hour(12), hour(24), "no usable model at a resolution dividing the 30min step"),
    ]


def test_verdicts_are_asked_for_children_of_an_additive_place() -> None:
    tree = PlaceTree.from_turtle(SODA_TTL)
    index = index_of(
        ("a", ranged(0, 24, model_type="consumption", context="zone=A")),
        ("b-flex", meta(model_type="consumption", context="zone=B", has_can_predict=True)),
    )
    query = day_query(model_type="consumption", context="floor=1")
    requests = verdict_requests(query, index, tree)
    assert [(r.ref.name, r.start_ns, r.end_ns) for r in requests] == [("b-flex", hour(0), hour(24))]
    result = plan(query, index, tree, verdicts=dict.fromkeys(requests, True))
    assert layout(result) == [(hour(0), hour(24), "composed")]
    assert layout(plan(query, index, tree, verdicts={}))[0][2] == "gap"
    assert verdict_requests(day_query(), index, tree) == ()  # thermal: none of these
