"""An application's selection policy as configured: candidates, the policy, or a combine mode.

The JSON shape (``SelectionSpec.parse``; a bad field is an ``invalid_request`` naming it)::

    {"candidates": ["thermal-a", "thermal-b"],   # model names; each answers at its serving version
     "policy": {"policy": "exp3", "gamma": 0.1}, # chooser.policies.SelectionPolicy
     "combine": null,                            # or mean | median | weighted | vote | first:
                                                 # ask every candidate and combine (no policy)
     "weights": {"thermal-a": 2.0},              # for "weighted"
     "deadline_ms": null,                        # for "first": answers after it are not waited for
     "reward_scale": 1.0,                        # feedback "truth" → reward (chooser.policies)
     "user_limit": 10000}                        # users whose state is kept (LRU beyond)
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bus.errors import InvalidRequest
from chooser.policies import CombineMode, SelectionPolicy
from proxy.registry.records import ModelName

__all__ = ["MAX_CANDIDATES", "SelectionSpec"]

MAX_CANDIDATES = 16


class SelectionSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    candidates: tuple[ModelName, ...] = Field(min_length=1, max_length=MAX_CANDIDATES)
    policy: SelectionPolicy = Field(default_factory=SelectionPolicy)
    combine: CombineMode | None = None
    weights: dict[ModelName, float] = Field(default_factory=dict, max_length=MAX_CANDIDATES)
    deadline_ms: float | None = Field(default=None, gt=0, le=600_000)
    reward_scale: float = Field(default=1.0, gt=0, le=1e12)
    user_limit: int = Field(default=10_000, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _distinct(self) -> SelectionSpec:
        if len(set(self.candidates)) != len(self.candidates):
            raise ValueError("each candidate may appear once")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("weights are not negative")
        return self

    @classmethod
    def parse(cls, data: Any) -> SelectionSpec:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'selection'}: {err['msg']}"
                for err in exc.errors(include_input=False)[:5]
            )
            raise InvalidRequest(f"bad selection policy: {problems}") from None

    def to_data(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
