"""Model metadata, validated where it enters (deploy): what a model predicts, where, and when.

The JSON shape (``ModelMetadata.parse`` accepts it; every bad field is named in ``MetadataError``)::

    {"type": "thermal",                      # known: consumption, thermal, occupancy, weather;
                                             # or any [a-z][a-z0-9_-]{0,63}
     "context": {"zone": "A"},               # exactly one place: kind and id
     "resolution_s": 900,                    # the step the model produces, in seconds
     "coverage": {                           # when it can predict — or "has_can_predict": true
         "timezone": "America/Los_Angeles",  # IANA name the rules and naive dates are read in
         "ranges": [{"start": "2018-01-01 00:00", "end": "2019-01-01 00:00"}],
         "rules": [{"days": [0, 1, 2, 3, 4], "hours": [8, 9, 10], "months": [1, 2]}]},
     "training_streams": ["soda/sensors/zoneA/temp"],   # bus URIs, optional
     "training_range": {"start": "2017-01-01 00:00 PST", "end": "2018-01-01 00:00 PST"},
     "cache_ttl_s": 600,                     # optional: cache results of outside calls
     "aggregation": "mean"}                  # optional: overrides the table below

Coverage: an instant is covered when it lies inside one of ``ranges`` (or there are none) AND
it matches one of ``rules`` (or there are none); at least one range or rule is required. A rule
matches a local time whose weekday (Monday = 0), hour and month are in its lists; an empty or
missing list matches everything. Dates without a zone are read in ``timezone`` (in UTC for
``training_range``). With ``has_can_predict`` there is no ``coverage``: the model's own
``can_predict(start, end, resolution)`` decides, run by the wiring in the model's worker; the
planner only receives its verdicts.

Aggregation per type (``AGGREGATION``), used to resample and to compose places:

    =============  =====  ===================================
    type           rule   why
    =============  =====  ===================================
    consumption    sum    energy per interval adds up
    energy         sum
    thermal        mean   temperature is an intensive quantity
    weather        mean
    occupancy      mean   a rate or count at an instant
    other types    mean   unless the metadata says ``sum``
    =============  =====  ===================================

A model's own ``aggregation`` decides how its series is resampled; a query's aggregation (which
decides composition and whether ancestors may answer) is the table's, or the query's own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from bus import InvalidUri, uri
from chooser.places import Place, parse_context
from chooser.timegrid import parse_instant, to_ns

__all__ = [
    "AGGREGATION",
    "KNOWN_TYPES",
    "Aggregation",
    "Coverage",
    "DateRange",
    "MetadataError",
    "ModelMetadata",
    "RecurringRule",
]

Aggregation = Literal["mean", "sum"]
KNOWN_TYPES = ("consumption", "occupancy", "thermal", "weather")
AGGREGATION: dict[str, Aggregation] = {
    "consumption": "sum",
    "energy": "sum",
    "thermal": "mean",
    "weather": "mean",
    "occupancy": "mean",
}
MAX_RANGES = 64
MAX_RULES = 32
MAX_STREAMS = 64
MAX_RESOLUTION_S = 31 * 86400
MAX_TTL_S = 7 * 86400


class MetadataError(ValueError):
    """Invalid metadata; ``errors`` is one ``(field, message)`` per bad field."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        lines = "; ".join(f"{field}: {message}" for field, message in errors)
        super().__init__(f"invalid model metadata: {lines}")


def _check_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError("unknown IANA time zone (e.g. America/Los_Angeles)") from exc
    return name


def _check_stream(stream: str) -> str:
    try:
        uri.parse(stream, allow_wildcards=False)
    except InvalidUri as exc:
        raise ValueError(f"not a bus URI: {exc}") from None
    return stream


def _distinct(values: list[int]) -> list[int]:
    if len(set(values)) != len(values):
        raise ValueError("values must be distinct")
    return sorted(values)


_Frozen = ConfigDict(frozen=True, extra="forbid")
Days = Annotated[list[Annotated[int, Field(ge=0, le=6)]], AfterValidator(_distinct)]
Hours = Annotated[list[Annotated[int, Field(ge=0, le=23)]], AfterValidator(_distinct)]
Months = Annotated[list[Annotated[int, Field(ge=1, le=12)]], AfterValidator(_distinct)]


class DateRange(BaseModel):
    """``[start, end)``; a string without a zone is read in the coverage's ``timezone``."""

    model_config = _Frozen
    start: Annotated[str, Field(min_length=1, max_length=64)]
    end: Annotated[str, Field(min_length=1, max_length=64)]

    def bounds_ns(self, zone: str) -> tuple[int, int]:
        """The range in epoch nanoseconds, naive strings read in ``zone``."""
        return _instant_ns(self.start, zone, "start"), _instant_ns(self.end, zone, "end")

    def check(self, zone: str) -> None:
        start, end = self.bounds_ns(zone)
        if end <= start:
            raise ValueError("a range's end must be after its start")


def _instant_ns(text: str, zone: str, field: str) -> int:
    try:
        return to_ns(parse_instant(text, field=field))
    except ValueError as exc:
        if "needs a zone" not in str(exc):
            raise
    return to_ns(parse_instant(f"{text.replace('T', ' ')} {zone}", field=field))


class RecurringRule(BaseModel):
    """Weekdays (Monday = 0), hours (0-23) and months (1-12) in local time; empty = all."""

    model_config = _Frozen
    days: Days = []
    hours: Hours = []
    months: Months = []

    def matches(self, local: datetime) -> bool:
        return (
            (not self.days or local.weekday() in self.days)
            and (not self.hours or local.hour in self.hours)
            and (not self.months or local.month in self.months)
        )


class Coverage(BaseModel):
    """When a model can predict: ``ranges`` intersected with ``rules``, in ``timezone``."""

    model_config = _Frozen
    timezone: Annotated[str, Field(max_length=64), AfterValidator(_check_zone)]
    ranges: Annotated[list[DateRange], Field(max_length=MAX_RANGES)] = []
    rules: Annotated[list[RecurringRule], Field(max_length=MAX_RULES)] = []

    @model_validator(mode="after")
    def _some_and_sound(self) -> Coverage:
        if not self.ranges and not self.rules:
            raise ValueError("give at least one range or rule (or has_can_predict instead)")
        for number, date_range in enumerate(self.ranges):
            try:
                date_range.check(self.timezone)
            except ValueError as exc:
                raise ValueError(f"ranges.{number}: {exc}") from None
        return self


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


class ModelMetadata(BaseModel):
    """What a model predicts (type), where (context), when (coverage) and from what (training)."""

    model_config = _Frozen
    type: Annotated[str, BeforeValidator(_lower), Field(pattern=r"^[a-z][a-z0-9_\-]{0,63}$")]
    context: Annotated[dict[str, str], Field(min_length=1, max_length=1)]
    resolution_s: Annotated[int, Field(ge=1, le=MAX_RESOLUTION_S)]
    coverage: Coverage | None = None
    has_can_predict: bool = False
    training_streams: Annotated[
        list[Annotated[str, AfterValidator(_check_stream)]], Field(max_length=MAX_STREAMS)
    ] = []
    training_range: DateRange | None = None
    cache_ttl_s: Annotated[float, Field(gt=0, le=MAX_TTL_S)] | None = None
    aggregation: Aggregation | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelMetadata:
        parse_context(self.context)
        if self.has_can_predict == (self.coverage is not None):
            raise ValueError("give exactly one of coverage or has_can_predict: true")
        if self.training_range is not None:
            self.training_range.check("UTC")
        return self

    @property
    def place(self) -> Place:
        return parse_context(self.context)

    @property
    def aggregation_rule(self) -> Aggregation:
        """The metadata's own ``aggregation``, else the type's entry in ``AGGREGATION``."""
        return self.aggregation or AGGREGATION.get(self.type, "mean")

    @classmethod
    def parse(cls, data: Any) -> ModelMetadata:
        """Validate untrusted metadata; every failure is a ``MetadataError`` naming its fields."""
        if isinstance(data, ModelMetadata):
            return data
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise MetadataError(_field_errors(exc)) from None


def _field_errors(exc: ValidationError) -> list[tuple[str, str]]:
    found = []
    for error in exc.errors(include_input=False, include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or "metadata"
        message = error["msg"].removeprefix("Value error, ")
        found.append((field, message))
    return found
