"""The contract spec: the documented JSON parses; bad fields are named, values never echoed."""

from __future__ import annotations

import pytest

from chooser.policies import ContractSpec, PolicyError

DOC_EXAMPLE = {
    "router": "fair_share",
    "sticky": None,
    "shadow_sample": 1.0,
    "expiry": {"keep": "latest", "n": 3},
    "log": {"level": "sample", "sample": 0.1, "key_fields": ["zone", "day"], "separator": "."},
    "releases": [
        {"version": "1", "validity": {"gate": "immediately"}, "phase_in": {"mode": "immediate"}},
        {
            "version": "2",
            "share_pct": 10,
            "validity": {
                "gate": "metric",
                "metric": "mae",
                "op": "<=",
                "threshold": 0.5,
                "min_samples": 20,
            },
            "phase_in": {"mode": "linear", "span_s": 3600},
            "shadow": True,
        },
    ],
}


def test_the_documented_example_parses_and_round_trips() -> None:
    spec = ContractSpec.parse(DOC_EXAMPLE)
    assert spec.releases[1].share_pct == 10
    assert ContractSpec.parse(spec.to_data()) == spec


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"releases": []}, "releases"),
        ({"releases": [{"version": "1"}, {"version": "1"}]}, "contract"),
        ({"router": "random"}, "router"),
        ({"sticky": "cookie"}, "sticky"),
        ({"shadow_sample": 2}, "shadow_sample"),
        ({"expiry": {"keep": "top", "n": 2}}, "expiry"),
        ({"expiry": {"keep": "latest", "n": 2, "metric": "mae"}}, "expiry"),
        ({"releases": [{"version": "a/b"}]}, "releases.0.version"),
        ({"releases": [{"version": "1", "validity": {"gate": "soon"}}]}, "releases.0.validity"),
        ({"releases": [{"version": "1", "share_pct": 0}]}, "releases.0.share_pct"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_each_bad_field_is_named(change: dict[str, object], field: str) -> None:
    with pytest.raises(PolicyError) as caught:
        ContractSpec.parse({**DOC_EXAMPLE, **change})
    assert any(name.startswith(field) for name, _ in caught.value.problems)


def test_untrusted_values_are_not_echoed() -> None:
    with pytest.raises(PolicyError) as caught:
        ContractSpec.parse({**DOC_EXAMPLE, "router": "SECRET-VALUE"})
    assert "SECRET-VALUE" not in str(caught.value)


def test_a_non_mapping_is_a_policy_error() -> None:
    with pytest.raises(PolicyError):
        ContractSpec.parse([1, 2, 3])
