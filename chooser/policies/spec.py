"""A release contract as data: what an application routes between, validated where it enters.

The JSON shape (``ContractSpec.parse`` accepts it; every bad field is named in ``PolicyError``)::

    {"router": "fair_share",               # or "latest" (latest takes all once phased in)
     "sticky": null,                       # null: each request drawn anew; "requester": the
                                           # requester's key; "field:<name>": a request field
     "shadow_sample": 1.0,                 # fraction of requests copied to shadow releases
     "expiry": {"keep": "latest", "n": 3}, # or {"keep": "top", "n": 2, "metric": "mae",
                                           #     "higher_is_better": false}; or null
     "log": {"level": "sample", "sample": 0.1, "key_fields": ["zone", "day"],
             "separator": "."},            # level: none | full | sample
     "releases": [
       {"version": "1", "validity": {"gate": "immediately"}, "phase_in": {"mode": "immediate"}},
       {"version": "2", "share_pct": 10,   # a canary: 10% of requests once phased in
        "validity": {"gate": "metric", "metric": "mae", "op": "<=", "threshold": 0.5,
                     "min_samples": 20},
        "phase_in": {"mode": "linear", "span_s": 3600}, "shadow": true}]}

Gates (``validity.gate``): ``immediately``; ``never`` (shadow-only); ``after_time``
(``seconds`` since the release was added); ``after_requests`` (``count`` answers produced,
served or shadow); ``metric`` (the latest fed value of ``metric`` compared with ``threshold``
by ``op``, once at least ``min_samples`` values were fed). A release that passed its gate stays
valid (the moment is latched); ``route.restore`` and expiry do not reset it.

Phase-in (``phase_in.mode``): ``immediate``, or ``linear`` from 0 to 100% over ``span_s``
seconds from the moment the release became valid. A release's percentage at an instant is its
phase-in times ``share_pct`` (default 100).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "AfterRequests",
    "AfterTime",
    "ContractSpec",
    "Expiry",
    "Gate",
    "ImmediatePhaseIn",
    "Immediately",
    "LinearPhaseIn",
    "LogSpec",
    "MetricGate",
    "Never",
    "PhaseIn",
    "PolicyError",
    "ReleaseSpec",
]

MAX_RELEASES = 64
_NAME = r"^[A-Za-z0-9_.\-]{1,64}$"


class PolicyError(ValueError):
    """A contract, policy or request that cannot be used as given; ``problems`` lists
    ``(field, message)`` pairs, never the untrusted values themselves."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{field}: {message}" for field, message in problems))


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Immediately(_Frozen):
    gate: Literal["immediately"] = "immediately"


class Never(_Frozen):
    gate: Literal["never"]


class AfterTime(_Frozen):
    gate: Literal["after_time"]
    seconds: float = Field(ge=0, le=10 * 365 * 86400)


class AfterRequests(_Frozen):
    gate: Literal["after_requests"]
    count: int = Field(ge=0, le=10**12)


class MetricGate(_Frozen):
    gate: Literal["metric"]
    metric: str = Field(pattern=_NAME)
    op: Literal["<", "<=", ">", ">="]
    threshold: float = Field(allow_inf_nan=False)
    min_samples: int = Field(default=1, ge=1, le=10**9)


Gate = Annotated[
    Immediately | Never | AfterTime | AfterRequests | MetricGate, Field(discriminator="gate")
]


class ImmediatePhaseIn(_Frozen):
    mode: Literal["immediate"] = "immediate"


class LinearPhaseIn(_Frozen):
    mode: Literal["linear"]
    span_s: float = Field(gt=0, le=10 * 365 * 86400)


PhaseIn = Annotated[ImmediatePhaseIn | LinearPhaseIn, Field(discriminator="mode")]


class ReleaseSpec(_Frozen):
    """One model version of the application's contract."""

    version: str = Field(pattern=_NAME)
    validity: Gate = Field(default_factory=Immediately)
    phase_in: PhaseIn = Field(default_factory=ImmediatePhaseIn)
    share_pct: float = Field(default=100.0, gt=0, le=100)
    shadow: bool = False


class Expiry(_Frozen):
    """Keep the ``n`` latest valid releases, or the top ``n`` by a fed ``metric``."""

    keep: Literal["latest", "top"]
    n: int = Field(ge=1, le=MAX_RELEASES)
    metric: str | None = Field(default=None, pattern=_NAME)
    higher_is_better: bool = True

    @model_validator(mode="after")
    def _metric_for_top(self) -> Expiry:
        if (self.keep == "top") != (self.metric is not None):
            raise ValueError("a metric is required by keep 'top' and only by it")
        return self


class LogSpec(_Frozen):
    """The prediction log: ``none``, every request (``full``), or a ``sample`` fraction."""

    level: Literal["none", "full", "sample"] = "none"
    sample: float = Field(default=0.0, ge=0, le=1)
    key_fields: tuple[Annotated[str, Field(pattern=_NAME)], ...] = Field(default=(), max_length=16)
    separator: str = Field(default=".", min_length=1, max_length=8)


class ContractSpec(_Frozen):
    """An application's release contract (the module docstring shows the JSON)."""

    releases: tuple[ReleaseSpec, ...] = Field(min_length=1, max_length=MAX_RELEASES)
    router: Literal["fair_share", "latest"] = "fair_share"
    sticky: str | None = Field(default=None, pattern=r"^(requester|field:[A-Za-z0-9_.\-]{1,64})$")
    shadow_sample: float = Field(default=1.0, ge=0, le=1)
    expiry: Expiry | None = None
    log: LogSpec = Field(default_factory=LogSpec)

    @model_validator(mode="after")
    def _distinct_versions(self) -> ContractSpec:
        versions = [release.version for release in self.releases]
        if len(set(versions)) != len(versions):
            raise ValueError("each release version may appear once")
        return self

    @classmethod
    def parse(cls, data: Any) -> ContractSpec:
        """Validate untrusted data; every bad field is named in one ``PolicyError``."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise PolicyError(
                [
                    (".".join(str(part) for part in error["loc"]) or "contract", error["msg"])
                    for error in exc.errors(include_input=False)
                ]
            ) from None

    def to_data(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def release(self, version: str) -> ReleaseSpec:
        for release in self.releases:
            if release.version == version:
                return release
        raise PolicyError([("version", "no such release in the contract")])
