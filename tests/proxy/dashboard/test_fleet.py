"""The fleet's judgement, a pure function of its records and the clock: late, dead by missed
heartbeats or by the Last Will, retired by a clean shutdown, untrusted, and bounded memory."""

from __future__ import annotations

from proxy.dashboard import Fleet

S = 10**9
T0 = 1_700_000_000 * S
SEQ = T0 - 100 * S


def beating_fleet(interval_s: float = 2.0) -> Fleet:
    fleet = Fleet()
    status = {"seq": SEQ, "interval_s": interval_s, "models": [{"model": "m"}]}
    fleet.status("ns/a", status, arrived_ns=T0)
    fleet.state("ns/a", {"online": True, "seq": SEQ, "ts": SEQ}, sealed_ns=T0)
    fleet.lastalive("ns/a", {"ts": T0, "val": "…"}, arrived_ns=T0)
    return fleet


def judged(fleet: Fleet, now_ns: int) -> tuple[str, str]:
    fleet.judge(now_ns)
    record = fleet.records["ns/a"]
    return record.state, record.reason


def test_a_silent_service_turns_late_then_dead_by_its_own_period() -> None:
    fleet = beating_fleet(interval_s=2.0)
    assert judged(fleet, T0 + 2 * S) == ("alive", "alive")
    assert judged(fleet, T0 + 4 * S) == ("stale", "late")
    assert judged(fleet, T0 + 7 * S) == ("dead", "missed heartbeats")
    fleet.lastalive("ns/a", {"ts": T0 + 7 * S}, arrived_ns=T0 + 7 * S)
    assert judged(fleet, T0 + 7 * S) == ("alive", "alive")


def test_the_will_is_dead_and_a_clean_shutdown_retired() -> None:
    fleet = beating_fleet()
    will_sealed = SEQ + S  # at connect, before the first beat
    fleet.state("ns/a", {"online": False, "seq": SEQ, "ts": SEQ}, sealed_ns=will_sealed)
    assert judged(fleet, T0) == ("dead", "Last Will")
    fleet = beating_fleet()
    fleet.state("ns/a", {"online": False, "seq": SEQ, "ts": SEQ}, sealed_ns=T0 + S)
    assert judged(fleet, T0 + S) == ("retired", "clean shutdown")


def test_a_late_death_of_an_earlier_run_is_ignored_and_a_new_run_is_alive() -> None:
    fleet = beating_fleet()
    fleet.state("ns/a", {"online": False, "seq": SEQ - S, "ts": SEQ - S}, sealed_ns=SEQ - S)
    assert judged(fleet, T0) == ("alive", "alive")
    fleet.state("ns/a", {"online": False, "seq": SEQ, "ts": SEQ}, sealed_ns=SEQ + S)
    assert judged(fleet, T0)[0] == "dead"
    fleet.state("ns/a", {"online": True, "seq": T0, "ts": T0}, sealed_ns=T0 + S)
    fleet.lastalive("ns/a", {"ts": T0 + S}, arrived_ns=T0 + S)
    assert judged(fleet, T0 + S) == ("alive", "alive")


def test_an_untrusted_frame_is_never_alive_until_a_trusted_one_comes() -> None:
    fleet = beating_fleet()
    fleet.untrusted("ns/a", "bad signature", arrived_ns=T0 + S)
    assert judged(fleet, T0 + S) == ("untrusted", "untrusted: bad signature")
    fleet.lastalive("ns/a", {"ts": T0 + 2 * S}, arrived_ns=T0 + 2 * S)
    assert judged(fleet, T0 + 2 * S) == ("alive", "alive")
    assert [trusted for _, trusted in fleet.records["ns/a"].arrivals] == [True, False, True]


def test_only_changed_rows_are_sent_again_and_memory_is_bounded() -> None:
    fleet = beating_fleet()
    fleet.judge(T0)
    version = fleet.version
    fleet.judge(T0 + S)
    assert fleet.changed_since(version) == []
    small = Fleet(max_services=2)
    for name in "abc":
        small.lastalive(f"ns/{name}", {"ts": T0}, arrived_ns=T0)
    assert sorted(small.records) == ["ns/a", "ns/b"] and small.ignored == 1


def test_hostile_status_values_are_bounded_and_json_safe() -> None:
    fleet = Fleet()
    hostile = {"interval_s": float("nan"), "x": "y" * 10_000, "deep": [[[[[[1]]]]]], "b": b"z"}
    fleet.status("ns/a", hostile, arrived_ns=T0)
    record = fleet.records["ns/a"]
    assert record.interval_s == 10.0
    assert len(record.status["x"]) == 200 and record.status["b"] == "<1 bytes>"
    assert record.status["deep"] == [[[[None]]]]
    fleet.lastalive("ns/a", {"ts": "not a number"}, arrived_ns=T0)
    fleet.state("ns/a", {"online": "yes", "seq": 1}, sealed_ns=T0)
    assert record.last_alive_ns is None and record.online is None


def instance_fleet(names: str = "ab", interval_s: float = 2.0) -> Fleet:
    """A service ``ns/a`` served by named instances, each beating at T0."""
    fleet = Fleet()
    for index, name in enumerate(names):
        seq = SEQ + index
        status = {"seq": seq, "interval_s": interval_s, "models": [{"model": name}]}
        fleet.status("ns/a", status, arrived_ns=T0, instance=name)
        fleet.state("ns/a", {"online": True, "seq": seq, "ts": seq}, sealed_ns=T0, instance=name)
        fleet.lastalive("ns/a", {"ts": T0}, arrived_ns=T0, instance=name)
    fleet.lastalive("ns/a", {"ts": T0}, arrived_ns=T0)  # the service's own, which each refreshes
    return fleet


def instance_states(fleet: Fleet) -> list[tuple[str, str, str]]:
    row = fleet.records["ns/a"].row()
    return [(i["instance"], i["state"], i["reason"]) for i in row["instances"]]


def test_a_service_with_instances_is_alive_while_any_instance_is() -> None:
    fleet = instance_fleet()
    assert judged(fleet, T0 + S) == ("alive", "2 of 2 instances alive")
    assert instance_states(fleet) == [("a", "alive", "alive"), ("b", "alive", "alive")]
    will_sealed = SEQ + S
    fleet.state(
        "ns/a", {"online": False, "seq": SEQ, "ts": SEQ}, sealed_ns=will_sealed, instance="a"
    )
    assert judged(fleet, T0 + S) == ("alive", "1 of 2 instances alive")
    assert instance_states(fleet) == [("a", "dead", "Last Will"), ("b", "alive", "alive")]
    assert "history" not in fleet.records["ns/a"].row()["instances"][0]
    fleet.state("ns/a", {"online": False, "seq": SEQ + 1, "ts": 0}, sealed_ns=T0 + S, instance="b")
    assert judged(fleet, T0 + S) == ("dead", "no instance alive")
    assert fleet.counts()["dead"] == 1 and len(fleet.records) == 1


def test_an_instance_change_the_service_state_hides_is_still_sent() -> None:
    """b turns from late to dead by the clock while a lives: the service reads the same, yet
    its row (which carries b) changes version."""
    fleet = instance_fleet()
    fleet.judge(T0)
    fleet.lastalive("ns/a", {"ts": T0 + 4 * S}, arrived_ns=T0 + 4 * S, instance="a")
    assert judged(fleet, T0 + 4 * S) == ("alive", "1 of 2 instances alive")
    version = fleet.records["ns/a"].version
    assert judged(fleet, T0 + 7 * S) == ("alive", "1 of 2 instances alive")
    assert fleet.records["ns/a"].version > version
    assert instance_states(fleet)[1] == ("b", "dead", "missed heartbeats")


def test_all_instances_shut_down_cleanly_is_retired_and_instances_are_bounded() -> None:
    fleet = instance_fleet()
    for index, name in enumerate("ab"):
        death = {"online": False, "seq": SEQ + index, "ts": T0 + S}
        fleet.state("ns/a", death, sealed_ns=T0 + S, instance=name)
    assert judged(fleet, T0 + S) == ("retired", "clean shutdown")
    for index in range(200):
        fleet.lastalive("ns/a", {"ts": T0}, arrived_ns=T0, instance=f"i{index}")
    assert len(fleet.records["ns/a"].instances) == 64 and fleet.ignored == 200 - 62
