"""Stored state is untrusted too: any JSON-like value is either a state or a PolicyError."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chooser.policies import ContractSpec, ContractState, PolicyError, UserStates

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
release_like = st.fixed_dictionaries(
    {
        "added_ns": json_values,
        "served": json_values,
        "metrics": json_values,
        "valid_since_ns": json_values,
        "expired_ns": json_values,
        "pinned": json_values,
    }
)
BOUNDED = settings(max_examples=300, derandomize=True)


def _only_policy_errors(parse: Any, data: Any) -> None:
    with contextlib.suppress(PolicyError):
        parse(data)


@BOUNDED
@given(json_values | st.fixed_dictionaries({"releases": st.dictionaries(st.text(), release_like)}))
def test_contract_state(data: Any) -> None:
    _only_policy_errors(ContractState.from_data, data)


@BOUNDED
@given(
    json_values
    | st.fixed_dictionaries(
        {"limit": json_values, "evicted": json_values, "users": st.lists(json_values)}
    )
)
def test_user_states(data: Any) -> None:
    _only_policy_errors(UserStates.from_data, data)


@BOUNDED
@given(json_values | st.fixed_dictionaries({"releases": st.lists(json_values, max_size=3)}))
def test_contract_spec(data: Any) -> None:
    _only_policy_errors(ContractSpec.parse, data)
